"""LAPGAN (Denton et al., 2015): a coarse-to-fine Laplacian pyramid of conditional GANs."""
