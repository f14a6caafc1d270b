"""Image-quality metrics shared by `srgan eval`, training validation and text-to-image evaluation:
PSNR, SSIM and the checkerboard measure on the BT.601 luma (luma.py), and LPIPS (lpips.py)."""
