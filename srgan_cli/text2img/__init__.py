"""Text-to-image generation: a matching-aware conditional GAN after Reed et al. (2016)."""
