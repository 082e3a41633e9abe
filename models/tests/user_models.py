"""Models a user might have trained, made in the tests: untrained torchvision networks whose
batch-norm statistics are set from random images, so that — unlike a fresh network, whose
outputs are the same for every image — their answers depend on the pixels (a one-level change
in 1% of the pixels moves them by ~1e-4), and a parity check on them can fail."""
import torch
import torchvision


def lively(arch: str = "mobilenet_v3_small", classes: int = 3, seed: int = 0,
           size: tuple[int, int] = (64, 64)):
    """`size` is (height, width) of the images the network is calibrated on."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=classes)
    net.train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # a plain average over the calibration batches
        for _ in range(4):
            net(torch.randn(8, 3, *size))
    return net.eval()
