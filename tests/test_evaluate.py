"""``evaluate``: softmax averaged over every view of a video, whatever batch each view falls in."""
from __future__ import annotations

import torch
from conftest import seeded_model
from torch.utils.data import Dataset

from tokenbench.harness.evaluate import evaluate, model_input

FRAMES, SIZE, CLASSES, VIDEOS, VIEWS = 4, 32, 7, 6, 3


class ViewsOfVideos(Dataset):
    """``VIEWS`` random uint8 clips of each of ``VIDEOS`` videos, views of a video next to each other."""

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.clips = torch.randint(0, 256, (VIDEOS * VIEWS, FRAMES, SIZE, SIZE, 3), generator=g,
                                   dtype=torch.uint8)
        self.labels = torch.randint(0, CLASSES, (VIDEOS,), generator=g)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        return self.clips[i], int(self.labels[i // VIEWS]), {"video_index": i // VIEWS, "index": i}


def test_evaluate_ranks_the_mean_softmax_of_each_video():
    data = ViewsOfVideos()
    model = seeded_model(num_classes=CLASSES, num_frames=FRAMES, img_size=SIZE)
    with torch.no_grad():
        probs = model(model_input(data.clips, "cpu")).softmax(-1).view(VIDEOS, VIEWS, CLASSES).mean(1)
    top = probs.topk(5, dim=1).indices
    want1 = 100.0 * (top[:, 0] == data.labels).float().mean().item()
    want5 = 100.0 * (top == data.labels[:, None]).any(1).float().mean().item()
    # a batch of 4 splits the 3 views of several videos across two batches
    got = evaluate(model, data, batch_size=4)
    assert got["top1"] == want1 and got["top5"] == want5
    assert got["num_clips"] == VIDEOS * VIEWS and got["num_videos"] == VIDEOS
    assert got["views"] == f"{VIEWS} per video"
    # a clip cap leaves the last video with part of its views: still one video more, not a wrong count
    part = evaluate(model, data, batch_size=4, max_clips=VIEWS * 2 + 1)
    assert part["num_clips"] == VIEWS * 2 + 1 and part["num_videos"] == 3
