"""The Encoder's inference setup: BatchNorms folded without changing descriptors, decoding workers on one thread."""

import threading

import torch
from skimage import data as skdata

from retr.retrieval.encoder import Encoder, EncoderConfig


def test_default_encoder_folds_and_keeps_its_descriptors(one_torch_thread):
    """The real EfficientNet-Lite0 weights: all 49 BatchNorms folded, descriptors of real photos as unfolded."""
    photos = [skdata.coffee(), skdata.chelsea(), skdata.astronaut()]
    folded = Encoder(EncoderConfig.create(), device="cpu")
    plain = Encoder(EncoderConfig.create(), device="cpu", fold=False)
    assert (folded.folded, plain.folded) == (49, 0)
    a, b = folded(photos), plain(photos)
    assert a.shape == (3, 1280) and a.dtype == b.dtype
    assert abs(a - b).max() < 1e-5


def test_decoding_workers_run_torch_on_one_thread_and_the_default_comes_back():
    enc = Encoder(EncoderConfig.create("resnet18", weights="none"), device="cpu")
    n = torch.get_num_threads()
    seen = {}

    def in_thread(key, init=None):
        def run():
            if init is not None:
                init()
            seen[key] = torch.get_num_threads()
        t = threading.Thread(target=run)
        t.start()
        t.join()

    with enc.decoding_workers() as init:
        in_thread("worker", init)
        assert torch.get_num_threads() == n  # the calling thread keeps its own
    in_thread("later thread")
    assert seen == {"worker": 1, "later thread": n}
