"""vqnet: extreme image compression over lossy links."""
