"""Loading a checkpoint's processor offline, on machines without torchvision.

``AutoProcessor`` works for most families. Qwen2-VL-style processors (Qwen2-VL, Qwen2.5-VL) demand a
video processor in their constructor, and every video processor imports torchvision; without it
they are loaded as an image-only subclass of the same class (images and text work, videos are
refused). The class is made at run time, so build processors inside each worker, never pickle one.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any


@functools.cache
def image_only_processor_class(processor_class: type) -> type:
    """``processor_class`` without its video processor: a subclass of the same name whose constructor
    takes only the image processor, the tokenizer and the chat template.

    Qwen2-VL-style processors require a video processor, and every video processor imports
    torchvision; this one works without it for images and text (videos are unsupported)."""

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        # the base stores only the attributes of this signature, so the video slot is dropped
        processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(processor_class.__name__, (processor_class,), {"__init__": __init__})


def load_processor(directory: str | Path) -> Any:
    """The processor stored in ``directory`` (a tiny checkpoint or a real one), loaded offline.

    ``AutoProcessor``, except that a processor that needs a video processor is loaded as
    :func:`image_only_processor_class` when torchvision is missing (Qwen2-VL, Qwen2.5-VL)."""
    import transformers
    from transformers.utils import is_torchvision_available

    directory = Path(directory)
    name = _processor_class_name(directory)
    cls = getattr(transformers, name, None) if name else None
    if (cls is not None and not is_torchvision_available()
            and "video_processor" in inspect.signature(cls.__init__).parameters):
        return image_only_processor_class(cls).from_pretrained(directory, local_files_only=True)
    return transformers.AutoProcessor.from_pretrained(directory, local_files_only=True)


def _processor_class_name(directory: Path) -> str | None:
    """``processor_class`` as recorded by the checkpoint (newer saves: processor_config.json; older
    Hub checkpoints: the image-processor or tokenizer config)."""
    for file in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = directory / file
        if path.is_file():
            name = json.loads(path.read_text()).get("processor_class")
            if name:
                return name
    return None
