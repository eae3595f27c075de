"""BatchStream: DataLoader workers change where items are built, never which batches come out."""

from pathlib import Path

import torch

from dreamprm.data import load_records
from dreamprm.examples import BatchStream, ConversationDataset, ExampleBuilder

DATA = Path(__file__).resolve().parents[1] / "data"


def test_workers_yield_the_same_batches_across_an_epoch_boundary_and_a_resume(tiny_prm):
    records, _ = load_records(DATA / "train.json", "train")
    dataset = ConversationDataset(records[:7], DATA / "train.json", ExampleBuilder(tiny_prm.processor, 2))
    serial, parallel = BatchStream(dataset, 3, 5, 0), BatchStream(dataset, 3, 5, 0, num_workers=2)
    for n in range(5):  # 3 batches per epoch: crosses into the second epoch
        if n == 3:  # and the parallel one is resumed from a state mid-stream
            resumed = BatchStream(dataset, 3, 5, 0, num_workers=2)
            resumed.load_state_dict(parallel.state_dict())
            parallel = resumed
        a, b = serial.next(), parallel.next()
        for field in ("input_ids", "attention_mask", "label_pos", "labels", "index", "pixel_values"):
            assert torch.equal(getattr(a, field), getattr(b, field)), (n, field)
    assert serial.state_dict() == parallel.state_dict() == {"epoch": 1, "taken": 2, "seed": 5, "batch_size": 3}
