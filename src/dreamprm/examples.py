"""From validated records to model inputs: image tiles, token ids, label positions, batches.

Image decoding and tiling happen here, inside ``Dataset.__getitem__``, so they run in
DataLoader workers when ``--num_workers`` > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from PIL import Image
from torch.utils.data import Dataset

from .data import resolve_image
from .prompt import encode_conversation


def load_rgb(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


class ExampleBuilder:
    """Turns (image, conversation) into tensors with the real processor's image tiling."""

    def __init__(self, processor, max_patch_num: int):
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.tokens_per_tile = int(processor.image_seq_length)
        self.max_patch_num = int(max_patch_num)

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """(tiles, 3, T, T): InternVL dynamic tiling (+ thumbnail), normalised."""
        out = self.image_processor(
            images=[image],
            crop_to_patches=True,
            min_patches=1,
            max_patches=self.max_patch_num,
            return_tensors="pt",
        )
        return out["pixel_values"]

    def build(self, conversations: list[dict], image: Image.Image | None = None, pixel_values=None) -> dict:
        if pixel_values is None and image is not None:
            pixel_values = self.pixel_values(image)
        n_img = 0 if pixel_values is None else pixel_values.shape[0] * self.tokens_per_tile
        enc = encode_conversation(self.tokenizer, conversations, n_img)
        return {
            "input_ids": torch.tensor(enc.input_ids, dtype=torch.long),
            "label_positions": torch.tensor(enc.label_positions, dtype=torch.long),
            "labels": torch.tensor(enc.labels, dtype=torch.float32),
            "pixel_values": pixel_values,
        }


class ConversationDataset(Dataset):
    """Training or meta records; each item also carries its instance and domain index."""

    def __init__(self, records: list[dict], json_path, builder: ExampleBuilder, domains: list[str] | None = None):
        self.records = records
        self.json_path = json_path
        self.builder = builder
        self.ids = [str(r["id"]) for r in records]
        self.domains = domains or sorted({r.get("dataset", "default") for r in records})
        self._domain_index = {d: i for i, d in enumerate(self.domains)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        image = load_rgb(resolve_image(rec["image"], self.json_path))
        item = self.builder.build(rec["conversations"], image)
        item["index"] = index
        item["domain"] = self._domain_index.get(rec.get("dataset", "default"), -1)
        item["true_false"] = float(rec.get("true_false", True))
        return item


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    label_batch: torch.Tensor
    label_pos: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    index: torch.Tensor
    domain: torch.Tensor
    true_false: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "Batch":
        moved = {
            k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for k, v in self.__dict__.items()
        }
        return Batch(**moved)

    def model_inputs(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "label_batch": self.label_batch,
            "label_pos": self.label_pos,
            "pixel_values": self.pixel_values,
        }

    def pin_memory(self) -> "Batch":
        pinned = {k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**pinned)


def collate(items: list[dict], pad_id: int = 0) -> Batch:
    """Right-pad token ids; concatenate tiles; flatten label positions with their batch index."""
    length = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    label_batch, label_pos, labels = [], [], []
    for b, it in enumerate(items):
        n = len(it["input_ids"])
        ids[b, :n] = it["input_ids"]
        mask[b, :n] = 1
        label_batch.append(torch.full_like(it["label_positions"], b))
        label_pos.append(it["label_positions"])
        labels.append(it["labels"])
    pixels = [it["pixel_values"] for it in items if it.get("pixel_values") is not None]
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        label_batch=torch.cat(label_batch),
        label_pos=torch.cat(label_pos),
        labels=torch.cat(labels),
        pixel_values=torch.cat(pixels) if pixels else None,
        index=torch.tensor([it.get("index", -1) for it in items], dtype=torch.long),
        domain=torch.tensor([it.get("domain", -1) for it in items], dtype=torch.long),
        true_false=torch.tensor([it.get("true_false", 1.0) for it in items], dtype=torch.float32),
    )


class BatchStream:
    """An endless, seeded, resumable stream of batches over a dataset.

    Epoch ``e`` visits the dataset in the permutation drawn from ``seed`` and ``e``; the
    stream's position (epoch, batches taken) is all a checkpoint needs to resume it exactly.
    Items are built in DataLoader workers when ``num_workers`` > 0.
    """

    def __init__(self, dataset, batch_size: int, seed: int, pad_id: int, num_workers: int = 0,
                 pin_memory: bool = False, shuffle: bool = True):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.pad_id = pad_id
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.shuffle = shuffle
        self.epoch = 0
        self.taken = 0
        self._iter = None

    def _order(self) -> list[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(n, generator=g).tolist()

    def _start(self) -> None:
        from torch.utils.data import DataLoader

        order = self._order()[self.taken * self.batch_size :]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=partial(collate, pad_id=self.pad_id),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
        self._iter = iter(loader)

    def next(self) -> Batch:
        if self._iter is None:
            self._start()
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch, self.taken = self.epoch + 1, 0
            self._start()
            batch = next(self._iter)
        self.taken += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "taken": self.taken, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.taken = int(state["epoch"]), int(state["taken"])
        self._iter = None
