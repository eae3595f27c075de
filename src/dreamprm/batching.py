"""From validated records to model inputs: image tiles, token ids, label positions, batches.

Image decoding and tiling happen here, inside ``Dataset.__getitem__``, so they run in
DataLoader workers when ``--num_workers`` > 0.

``ExampleBuilder.sequence_length`` and ``drop_overlong`` know a record's token count before any
model is loaded (the processor is enough): text tokens plus image tokens, the latter from the
image's size and the tiling rule, without decoding pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import torch
from PIL import Image
from torch.utils.data import Dataset

from .prompt import PromptError, candidate_conversation, encode_conversation, encoded_lengths
from .records import DataError, plural, record_label, resolve_image


def dataloader_workers(device, most: int) -> int:
    """DataLoader worker processes for image work on ``device``: on cuda up to ``most``, leaving
    one CPU core to the process that launches the kernels; 0 elsewhere, where the workers would
    take cores from the model's own computation."""
    if not str(device).startswith("cuda"):
        return 0
    return min(most, max((os.cpu_count() or 1) - 1, 0))


def load_rgb(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


@dataclass
class _Length:
    """A record's token count: the whole sequence, its image tokens, and (test records) which
    candidate is the longest."""

    total: int
    image: int
    candidate: int | None = None


class ExampleBuilder:
    """Turns (image, conversation) into tensors with the real processor's image tiling."""

    def __init__(self, processor, max_patch_num: int):
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.tokens_per_tile = int(processor.image_seq_length)
        self.max_patch_num = int(max_patch_num)

    def image_tokens(self, width: int, height: int) -> int:
        """``<IMG_CONTEXT>`` tokens of a ``width`` x ``height`` image: tiles (thumbnail included)
        by the image processor's own tiling rule, times tokens per tile; no pixel is decoded."""
        kwargs = {"crop_to_patches": True, "min_patches": 1, "max_patches": self.max_patch_num}
        tiles = self.image_processor.get_number_of_image_patches(height, width, kwargs)
        return int(tiles) * self.tokens_per_tile

    def sequence_length(self, record: dict, json_path, kind: str = "train", splitter: str = "upstream") -> int:
        """Tokens the model reads for a validated record: text + image tokens, equal to
        ``len(build(...)["input_ids"])``. For a test record (``kind="test"``) the longest of its
        candidates, split with ``splitter`` as test.py splits them. Raises ``DataError`` (image
        size unreadable) or ``PromptError``."""
        result = self._lengths([record], json_path, kind, splitter)[0]
        if isinstance(result, str):
            raise DataError(result)
        if isinstance(result, Exception):
            raise result
        return result.total

    def sequence_lengths(self, records: list[dict], json_path, kind: str = "train",
                         splitter: str = "upstream") -> list[int]:
        """``sequence_length`` of every record, batched: fast enough for 100k records."""
        out = []
        for result in self._lengths(records, json_path, kind, splitter):
            if isinstance(result, str):
                raise DataError(result)
            if isinstance(result, Exception):
                raise result
            out.append(result.total)
        return out

    def _lengths(self, records: list[dict], json_path, kind: str, splitter: str) -> list:
        """Per record a ``_Length``, a problem text (the image's size cannot be read), or a
        ``PromptError``."""
        if kind not in ("train", "meta", "test"):
            raise ValueError(f"kind must be 'train', 'meta' or 'test', got {kind!r}")
        field = "image_path" if kind == "test" else "image"
        sizes: dict[str, tuple[int, int] | str] = {}
        image_counts: dict[tuple[int, int], int] = {}
        conversations, n_images, owner = [], [], []  # owner: (record index, candidate index or None)
        results: list = [None] * len(records)
        if kind == "test":
            from .steps import split_steps
        for r, rec in enumerate(records):
            value = rec[field]
            if value not in sizes:
                try:
                    with Image.open(resolve_image(value, json_path)) as im:
                        sizes[value] = im.size
                except Exception as exc:  # PIL raises many types for unreadable files
                    sizes[value] = f"field '{field}': cannot read the image's size ({type(exc).__name__}: {exc})"
            size = sizes[value]
            if isinstance(size, str):
                results[r] = size
                continue
            if size not in image_counts:
                image_counts[size] = self.image_tokens(*size)
            n_img = image_counts[size]
            if kind == "test":
                scored = 0
                for j, cand in enumerate(rec["candidates"]):
                    steps = split_steps(cand, splitter)
                    if steps:  # test.py scores no candidate without steps
                        conversations.append(candidate_conversation(rec["question"], steps))
                        n_images.append(n_img)
                        owner.append((r, j))
                        scored += 1
                if not scored:
                    results[r] = _Length(0, 0)
            else:
                conversations.append(rec["conversations"])
                n_images.append(n_img)
                owner.append((r, None))
        lengths = encoded_lengths(self.tokenizer, conversations, n_images)
        for (r, j), length, n_img in zip(owner, lengths, n_images):
            if isinstance(results[r], (str, Exception)):
                continue
            if isinstance(length, PromptError):
                results[r] = length
            elif results[r] is None or length > results[r].total:
                results[r] = _Length(length, n_img + 2, j)
        return results

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


def drop_overlong(
    records: list[dict],
    json_path,
    builder: ExampleBuilder,
    max_length: int,
    kind: str,
    skip_bad: bool,
    indices: list[int] | None = None,
    splitter: str = "upstream",
    max_errors: int = 20,
) -> tuple[list[dict], list[str]]:
    """Refuse (or, with ``skip_bad``, drop) records longer than ``max_length`` tokens.

    Needs only the processor: run it before the model loads. ``indices`` are the records'
    positions in the file (``LoadReport.indices``; default: their positions in ``records``), so
    messages name the record as ``load_records`` does. Returns the kept records and one
    ``FILE: record i (id ...): ...`` line per dropped record. Without ``skip_bad`` any over-long
    record raises one ``DataError`` listing them (the same shape as ``load_records``' errors); a
    record whose length cannot be computed (its image's size unreadable) counts as bad too.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if indices is None:
        indices = list(range(len(records)))
    if len(indices) != len(records):
        raise ValueError(f"{plural(len(indices), 'index', 'indices')} for {plural(len(records), 'record')}")
    path = str(json_path)
    kept, problems = [], []
    for rec, index, result in zip(records, indices, builder._lengths(records, json_path, kind, splitter)):
        where = f"{path}: {record_label(index, rec)}"
        if isinstance(result, str):
            problems.append(f"{where}: {result}")
        elif isinstance(result, Exception):
            problems.append(f"{where}: field '{'candidates' if kind == 'test' else 'conversations'}': {result}")
        elif result.total > max_length:
            what = "" if result.candidate is None else f"field 'candidates[{result.candidate}]' (the longest): "
            problems.append(
                f"{where}: {what}{result.total:,} tokens ({result.total - result.image:,} text + "
                f"{result.image:,} image), longer than --max_length {max_length:,}"
            )
        else:
            kept.append(rec)
    if problems and not skip_bad:
        shown = problems[:max_errors]
        more = len(problems) - len(shown)
        tail = f"\n... and {plural(more, 'more problem')}" if more > 0 else ""
        raise DataError(
            f"{path}: {plural(len(problems), 'bad record')} (use --skip_bad_records to drop them):\n"
            + "\n".join(shown) + tail
        )
    if not kept and records:
        raise DataError(f"{path}: no usable records (every record is longer than --max_length {max_length:,} "
                        "or unreadable)")
    return kept, problems


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


def collate(items: list[dict], pad_id: int = 0, pad_to_multiple_of: int = 0) -> Batch:
    """Right-pad token ids; concatenate tiles; flatten label positions with their batch index.

    ``pad_to_multiple_of`` > 0 pads the sequence length up to a multiple of it (length buckets:
    the shapes a CUDA graph is captured for repeat). Padding is on the right and masked, and the
    language model is causal, so no real token sees a pad: the step outputs are those of the
    unpadded batch, up to the rounding of kernels of another size."""
    length = max(len(it["input_ids"]) for it in items)
    if pad_to_multiple_of > 0:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
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

    Data parallel (``world_size`` ranks): every rank draws the same permutation and cuts it into
    global batches of ``world_size * batch_size``; rank r takes the r-th ``batch_size`` of each,
    so the ranks' batches together are the batch one process would take with a batch size of
    ``world_size * batch_size``, and the position is the same on every rank. An epoch's last
    global batch is dropped when it cannot give every rank a full batch (a single process keeps
    its short last batch, as before).
    """

    def __init__(self, dataset, batch_size: int, seed: int, pad_id: int, num_workers: int = 0,
                 pin_memory: bool = False, shuffle: bool = True, world_size: int = 1, rank: int = 0,
                 pad_to_multiple_of: int = 0):
        if world_size > 1 and len(dataset) < world_size * batch_size:
            raise ValueError(f"{len(dataset)} items cannot give each of {world_size} ranks a batch of {batch_size}")
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.pad_id = pad_id
        self.pad_to_multiple_of = int(pad_to_multiple_of)  # collate's length buckets (0: none)
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

        size, per_rank = self.batch_size * self.world_size, self.batch_size
        order = self._order()[self.taken * size :]
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        if self.world_size > 1:
            batches = [b[self.rank * per_rank : (self.rank + 1) * per_rank] for b in batches if len(b) == size]
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=partial(collate, pad_id=self.pad_id, pad_to_multiple_of=self.pad_to_multiple_of),
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
