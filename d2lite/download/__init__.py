"""Finding or downloading the Fashion-MNIST files."""
