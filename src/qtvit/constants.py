"""Dataset statistics, in one place: models' pretrained configs and the data pipeline both read them here."""
from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_CLASSES"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Fashion-MNIST's 60 000 training images, pixel values in [0, 1]
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
