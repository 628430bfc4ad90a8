"""Inference: verify and rebuild stored models, turn uploaded images (PNG/JPEG, uint8 JSON) into a batch, predict."""

from __future__ import annotations

import hashlib

import torch

import models
from app.datasets.images import decode_image
from app.errors import IntegrityError, InvalidInput, PayloadTooLarge

MAX_IMAGES = 256  # per request: a batch this size of the allowed input shapes stays a few MB


def _check_count(count: int, field: str) -> None:
    if count == 0:
        raise InvalidInput("no images given: send one or more as multipart field `files` (PNG/JPEG) or as "
                           "JSON {\"images\": [...]}", field=field)
    if count > MAX_IMAGES:
        raise PayloadTooLarge(f"{count} images sent; at most {MAX_IMAGES} per request — split the batch",
                              field=field)


def decode_files(blobs: list[bytes], input_shape: list[int]) -> torch.Tensor:
    """PNG/JPEG files → uint8 N×C×H×W in the model's channel count; 422 for another size."""
    _check_count(len(blobs), "files")
    return torch.stack([_decode(blob, input_shape, index) for index, blob in enumerate(blobs)])


def _decode(blob: bytes, input_shape: list[int], index: int) -> torch.Tensor:
    channels, height, width = input_shape
    field = f"files[{index}]"
    try:  # more pixels than the model takes are refused from the header, before decoding
        image = decode_image(blob, max_pixels=height * width)
    except InvalidInput as exc:
        raise InvalidInput(f"{field}: {exc.detail}; the model takes {height}×{width} (H×W) images",
                           field=field, expected=[height, width]) from None
    if tuple(image.shape[1:]) != (height, width):
        raise InvalidInput(f"{field}: expected {height}×{width} (H×W) pixels, got {image.shape[1]}×{image.shape[2]}",
                           field=field, expected=[height, width], got=list(image.shape[1:]))
    if image.shape[0] == channels:
        return image
    if channels == 1:  # RGB → L with Pillow's integer ITU-R 601-2 luma, as Image.convert("L") does
        r, g, b = image.to(torch.int64)
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[None]
    if channels == 3:
        return image.expand(3, -1, -1).clone()
    raise InvalidInput(f"{field}: the model takes {channels} channels; PNG/JPEG give 1 or 3", field=field)


def decode_arrays(images: list, input_shape: list[int]) -> torch.Tensor:
    """Nested uint8 lists (C×H×W, or H×W for one channel) → uint8 N×C×H×W; 422 for a wrong shape."""
    _check_count(len(images), "images")
    return torch.stack([_array(image, input_shape, index) for index, image in enumerate(images)])


def _array(image, input_shape: list[int], index: int) -> torch.Tensor:
    field = f"images[{index}]"
    try:
        tensor = torch.tensor(image)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidInput(f"{field}: not a rectangular nested list of integers", field=field) from None
    if tensor.dtype != torch.int64 or (tensor.numel() and (tensor.min() < 0 or tensor.max() > 255)):
        raise InvalidInput(f"{field}: pixel values must be integers 0..255", field=field)
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3:
        raise InvalidInput(f"{field}: expected a C×H×W or H×W array, got {tensor.dim()} dimensions", field=field)
    if tensor.shape[0] != input_shape[0]:
        raise InvalidInput(f"{field}: the model takes {input_shape[0]} channels, got {tensor.shape[0]}",
                           field=field, expected=list(input_shape), got=list(tensor.shape))
    if list(tensor.shape[1:]) != list(input_shape[1:]):
        raise InvalidInput(f"{field}: expected {input_shape[1]}×{input_shape[2]} (H×W), got "
                           f"{tensor.shape[1]}×{tensor.shape[2]}", field=field, expected=list(input_shape),
                           got=list(tensor.shape))
    return tensor.to(torch.uint8)


def verified_model(version: str, blob: bytes, metadata: dict, *,
                   device: str = "cpu") -> tuple[torch.nn.Sequential, dict]:
    """Rebuild a stored model file whose bytes match the sha256 its metadata records (IntegrityError if not), on
    the device named by `device` (a SCV_DEVICE value) in its fast memory format."""
    digest = hashlib.sha256(blob).hexdigest()
    if digest != metadata.get("sha256"):
        raise IntegrityError(f"model file of {version!r} has sha256 {digest}, but its metadata records "
                             f"{metadata.get('sha256')}; refusing to load it", version=version)
    try:
        net, header = models.load_model_with_header(blob)
    except models.ModelFileError as exc:
        raise IntegrityError(f"stored model {version!r} was refused: {exc}", version=version) from None
    net.to(device=models.pick_device(device), memory_format=models.memory_format(net))
    return net, {**metadata, **{k: header[k] for k in ("layers", "input_shape", "classes", "normalization")}}


def predict(model: torch.nn.Module, metadata: dict, batch: torch.Tensor, *, max_bytes: int, precision: str = "auto",
            cpu_bf16: bool | None = None) -> list[dict]:
    """Label, class name and class probabilities of each uint8 image, as the model was trained to see it, on the
    model's device at `precision` (auto, fp32, bf16; auto is bf16 where the device computes it natively, on CPU as
    `cpu_bf16` (SCV_CPU_BF16) says when set), in batches whose float32 activations fit `max_bytes`
    (SCV_ANALYSIS_MAX_BYTES); 422 naming the layer when one image does not fit."""
    try:
        size = models.forward_batch(metadata["layers"], input_shape=metadata["input_shape"], max_bytes=max_bytes)
    except models.MemoryBudgetError as exc:
        raise InvalidInput(str(exc), field="layers" if exc.index is None else f"layers[{exc.index}]",
                           needed_bytes=exc.needed, max_bytes=max_bytes) from None
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    norm = metadata["normalization"]
    output = models.logits(model, batch, mean=norm["mean"], std=norm["std"], device=device, batch_size=size,
                           precision=models.resolve_precision(precision, device, cpu_bf16=cpu_bf16))
    probabilities = torch.softmax(output, dim=1).cpu()
    classes = metadata["classes"]
    return [{"label": int(row.argmax()), "class": classes[int(row.argmax())], "probabilities": row.tolist()}
            for row in probabilities]
