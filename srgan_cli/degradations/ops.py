"""The degradation operations on batches of (N, 3, H, W) float images in [0, 1] on any device:
resize, Gaussian and Poisson noise, JPEG and video-codec round trips, and unsharp masking. The
random choices arrive as arguments (the pipeline draws them), so each op is a plain function."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from .kernels import filter2d, gaussian_kernel


def resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *size) by area, bilinear or bicubic interpolation (no antialiasing,
    as camera pipelines and web resizers often do)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode == "area":
        return F.interpolate(images, size=size, mode="area")
    return F.interpolate(images, size=size, mode=mode, align_corners=False).clamp_(0.0, 1.0)


def gaussian_noise(
    images: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Add N(0, sigma/255) noise; sigma (N,) in grey levels, gray (N,) bool: the same noise in R, G, B."""
    n, c, h, w = images.shape
    colour = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    mono = torch.randn((n, 1, h, w), generator=generator, device=images.device, dtype=images.dtype)
    noise = torch.where(gray.to(images.device).view(n, 1, 1, 1), mono.expand_as(colour), colour)
    return images + noise * (sigma.to(images.device, images.dtype) / 255.0).view(n, 1, 1, 1)


def poisson_noise(
    images: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Add shot noise: (Poisson(255 x) / 255 - x) x scale, per channel or (gray) on luma."""
    n = images.shape[0]
    x = images.clamp(0.0, 1.0)
    luma = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # (N, 1, H, W)
    colour = torch.poisson(x * 255.0, generator=generator) / 255.0 - x
    mono = (torch.poisson(luma * 255.0, generator=generator) / 255.0 - luma).expand_as(colour)
    noise = torch.where(gray.to(images.device).view(n, 1, 1, 1), mono, colour)
    return images + noise * scale.to(images.device, images.dtype).view(n, 1, 1, 1)


def bicubic_lr(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The SR protocol's LR of a batch: antialiased bicubic to `size`, rounded to 8 bit like a file."""
    lr = F.interpolate(images, size=size, mode="bicubic", antialias=True)
    return lr.mul_(255.0).round_().clamp_(0, 255).div_(255.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def jpeg(images: torch.Tensor, quality: list[int]) -> torch.Tensor:
    """Each image saved as a baseline JPEG (4:2:0, as cameras and the web save them) at its own
    quality and decoded: by libjpeg through Pillow, or on CUDA by nvJPEG where torchvision has it."""
    data = to_uint8(images)  # (N, 3, H, W) uint8
    if images.is_cuda:
        try:
            return _jpeg_cuda(data, quality).to(images.dtype).div_(255.0)
        except (RuntimeError, TypeError, ImportError):  # no nvJPEG encoder in this build: the CPU does it
            pass
    pixels = data.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
    out = np.stack([_jpeg_round_trip(img, int(q)) for img, q in zip(pixels, quality, strict=True)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(images.device, images.dtype).div_(255.0)


def _jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    buffer.seek(0)
    with Image.open(buffer) as im:
        return np.asarray(im.convert("RGB"))


def _jpeg_cuda(data: torch.Tensor, quality: list[int]) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg, encode_jpeg

        out = [
            decode_jpeg(encode_jpeg(img, quality=int(q)), device=data.device)
            for img, q in zip(data, quality, strict=True)
        ]
    return torch.stack(out)


def video_codec(images: torch.Tensor, codecs: list[str], crf: list[int]) -> torch.Tensor:
    """Each image encoded as one intra frame by libx264/libx265 at its own CRF (yuv420p, as almost
    all distributed video is) and decoded again, through PyAV on the CPU."""
    data = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
    out = np.stack([codec_round_trip(img, c, q) for img, c, q in zip(data, codecs, crf, strict=True)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(images.device, images.dtype).div_(255.0)


_DECODERS = {"libx264": "h264", "libx265": "hevc"}


def codec_round_trip(rgb: np.ndarray, codec: str, crf: int) -> np.ndarray:
    """One frame through an encoder and its decoder (preset veryfast): an intra frame."""
    h, w = rgb.shape[:2]
    # 4:2:0 needs even sides, and x265 refuses frames under 64 px: pad with the edge, crop after
    ph, pw = max(64, h + h % 2) - h, max(64, w + w % 2) - w
    padded = np.ascontiguousarray(np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge"))
    return stream_round_trip([padded], codec, crf, preset="veryfast")[0][:h, :w]


def stream_round_trip(
    frames: list[np.ndarray], codec: str, crf: int, *, preset: str = "medium", threads: int = 0
) -> list[np.ndarray]:
    """RGB frames of one size (even sides; x265: 64 px or more) encoded by libx264/libx265 as one
    yuv420p stream at `crf` (the encoder's defaults otherwise: B-frames, one keyframe) and decoded
    again, in display order. Bare codec contexts: no container, so no muxer timing rules. `threads`
    1 makes a stream of many frames the same on every run (0: the encoder's own choice, whose
    output can move a little with the machine's load)."""
    import av

    h, w = frames[0].shape[:2]
    encoder = av.CodecContext.create(codec, "w")
    if threads:
        encoder.thread_count = threads
    encoder.width, encoder.height = w, h
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, 25)
    encoder.framerate = Fraction(25, 1)
    options = {"crf": str(int(crf)), "preset": preset}
    if codec == "libx265":
        options["x265-params"] = "log-level=none"
    encoder.options = options
    packets = []
    for t, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
            format="yuv420p"
        )
        frame.pts = t
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    decoder = av.CodecContext.create(_DECODERS[codec], "r")
    out = [f for packet in packets for f in decoder.decode(packet)] + list(decoder.decode(None))
    if len(out) != len(frames):
        raise RuntimeError(f"{codec} at CRF {crf} gave {len(out)} frame(s) back for {len(frames)}")
    out.sort(key=lambda f: f.pts)
    return [f.to_ndarray(format="rgb24") for f in out]


def unsharp_mask(
    images: torch.Tensor, weight: float, *, sigma: float = 8.0, threshold: float = 10 / 255
) -> torch.Tensor:
    """Real-ESRGAN's sharpened targets: img + weight (img - blur), blended in only where the detail
    exceeds `threshold` (with a soft, blurred mask), so flat areas keep their noise-free look."""
    kernel = gaussian_kernel(sigma).to(images.device).expand(images.shape[0], -1, -1)
    blurred = filter2d(images, kernel)
    detail = images - blurred
    mask = (detail.abs() * 1.0 > threshold).to(images.dtype)
    soft = filter2d(mask, kernel)
    sharp = (images + weight * detail).clamp(0.0, 1.0)
    return soft * sharp + (1 - soft) * images
