"""srgan-cli: image super-resolution with SRGAN."""

__version__ = "0.1.0"
