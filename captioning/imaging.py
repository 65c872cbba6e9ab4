"""Image preparation shared by every family, the caches and the caption command.

    square_pixels(image, size, resample, crop)  PIL image -> uint8 [3, S, S], resized (and cropped) as the processor would
    pixel_normalizer(processor)             fn(uint8 NCHW) -> float pixel_values, normalised on the device
    processor_size(processor)               the square size an image processor resizes to

The pixel cache (captioning.cache) and the captioners (captioning.captioner) both go through
square_pixels, so a photo captioned from a file gives exactly the pixels the run was scored on.
A leaf module: it imports nothing else of the package.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def square_pixels(image: Image.Image, size: int, resample: int = 2, crop: int = 0) -> np.ndarray:
    """An RGB image as the processor shapes it, as uint8 [3, S, S]: resized to size x size with its filter
    (ViT), or with crop > 0 its shorter side resized to `size` and the centred crop x crop square kept
    (CLIP, SigLIP: processor_crop), through transformers' own resize and crop."""
    if not crop:
        im = image.resize((size, size), resample=Image.Resampling(int(resample)))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    from transformers.image_transforms import center_crop, get_resize_output_image_size, resize
    from transformers.image_utils import ChannelDimension

    arr, last = np.asarray(image, dtype=np.uint8), ChannelDimension.LAST
    shape = get_resize_output_image_size(arr, size, default_to_square=False, input_data_format=last)
    arr = resize(arr, shape, resample=Image.Resampling(int(resample)), data_format=last, input_data_format=last)
    return np.ascontiguousarray(center_crop(arr, (crop, crop), data_format=last, input_data_format=last)
                                .astype(np.uint8).transpose(2, 0, 1))


def processor_crop(processor) -> int:
    """The centre-crop side of a processor that resizes the shorter side and then crops (CLIP, SigLIP with
    do_center_crop), else 0 (ViT: straight to a square)."""
    if not getattr(processor, "do_center_crop", False):
        return 0
    crop = getattr(processor, "crop_size", None)
    for key in ("height", "width"):
        value = crop.get(key) if isinstance(crop, dict) else getattr(crop, key, None)
        if value:
            return int(value)
    return 0


def processor_resample(processor) -> int:
    return int(getattr(processor, "resample", 2) or 2)


def pixel_normalizer(processor):
    """fn(uint8 NCHW tensor) -> normalised float pixel_values, as the processor would compute them."""
    mean = torch.tensor(getattr(processor, "image_mean", None) or [0.5] * 3).view(1, 3, 1, 1)
    std = torch.tensor(getattr(processor, "image_std", None) or [0.5] * 3).view(1, 3, 1, 1)
    scale = float(getattr(processor, "rescale_factor", 1 / 255))
    normalize = getattr(processor, "do_normalize", True)

    def fn(pixels: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        x = pixels.to(torch.float32) * scale
        if normalize:
            x = (x - mean.to(x.device)) / std.to(x.device)
        return x.to(dtype)

    return fn


def processor_size(processor) -> int:
    """The square input size the image processor resizes to."""
    size = getattr(processor, "size", None)
    for key in ("height", "shortest_edge", "width"):
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return 224


def pixel_batch(images, processor) -> torch.Tensor:
    """uint8 [N, 3, S, S] of RGB PIL images at the processor's size (normalise with pixel_normalizer)."""
    size, resample, crop = processor_size(processor), processor_resample(processor), processor_crop(processor)
    return torch.from_numpy(np.stack([square_pixels(im, size, resample, crop) for im in images]))
