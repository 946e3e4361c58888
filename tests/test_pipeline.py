"""The one inference pipeline (`stemjepa.models.pipeline.embed_files`): order, refusals, the failing file isolated,
progress, pieces, the loader hook; with the fake model (tests/test_search_fakes.py)."""
from __future__ import annotations

import numpy as np
import pytest
from test_search_fakes import CHUNK, SR, FakeModel, noise, tone, write

from stemjepa.errors import CheckpointError
from stemjepa.models.pipeline import Decoded, EmbedOptions, embed_files, join_pieces


class Breaks(FakeModel):
    """Fails on any batch holding a wave of `bad_len` samples (a file the model cannot take)."""

    def __init__(self, bad_len: int):
        super().__init__()
        self.bad_len, self.calls = bad_len, []

    def embed_many(self, waves, batch_size: int = 16, target: bool = True, precision: str | None = None):
        self.calls.append(len(waves))
        if any(len(w) == self.bad_len for w in waves):
            raise RuntimeError("shape mismatch in the encoder")
        return super().embed_many(waves, batch_size, target, precision)


def test_files_come_back_in_order_with_their_embedding_or_their_problem(tmp_path):
    good = [write(tmp_path / f"g{i}.wav", tone(110.0 * (i + 1), 1.0 + i)) for i in range(3)]
    silent = write(tmp_path / "silent.wav", np.zeros(SR, np.float32))
    short = write(tmp_path / "short.wav", tone(220.0, 0.05))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    paths = [good[0], silent, good[1], broken, short, good[2]]
    model, progress = FakeModel(), []
    out = list(embed_files(model, paths, EmbedOptions(batch_size=2),
                           on_progress=lambda done, total, seconds: progress.append((done, total, seconds))))
    assert [r.item for r in out] == paths
    problems = {r.item: r.problem for r in out if r.problem}
    assert set(problems) == {silent, short, broken}
    assert "silent" in problems[silent] and "too short" in problems[short] and problems[broken]
    assert out[-1].batch_end and model.embedded == 3
    for i, path in zip(range(3), good):
        r = out[paths.index(path)]
        assert np.allclose(r.embedding.vector, FakeModel().embed(tone(110.0 * (i + 1), 1.0 + i)).vector, atol=1e-6)
    dones = [d for d, _, _ in progress]
    assert dones == sorted(dones) and progress[-1][:2] == (6, 6)
    assert progress[-1][2] == pytest.approx(1.0 + 2.0 + 3.0)  # seconds of audio embedded


def test_a_file_that_breaks_the_model_is_reported_alone_and_the_others_go_on(tmp_path):
    paths = [write(tmp_path / f"s{i}.wav", tone(100.0 * (i + 1), 1.0 + 0.5 * i)) for i in range(4)]
    model = Breaks(bad_len=int(1.5 * SR))  # s1
    out = list(embed_files(model, paths, EmbedOptions(batch_size=16)))
    assert [r.item for r in out if r.problem] == [paths[1]]
    assert out[1].problem == "embedding failed (RuntimeError: shape mismatch in the encoder)"
    assert all(r.embedding is not None for i, r in enumerate(out) if i != 1)
    assert model.calls == [4, 1, 1, 1, 1]  # the group once, then each file alone


def test_a_setting_that_fails_every_file_is_raised_once_not_per_file(tmp_path):
    class Refuses(FakeModel):
        def embed_many(self, waves, batch_size=16, target=True, precision=None):
            raise CheckpointError("fp16 inference runs on CUDA only")

    paths = [write(tmp_path / f"s{i}.wav", tone(200.0, 1.0)) for i in range(2)]
    with pytest.raises(CheckpointError, match="CUDA only"):
        list(embed_files(Refuses(), paths))


def test_non_finite_embeddings_are_a_problem_of_that_file(tmp_path):
    class NaNs(FakeModel):
        def embed_many(self, waves, batch_size=16, target=True, precision=None):
            out = super().embed_many(waves, batch_size, target, precision)
            out[0].vector[:] = np.nan
            return out

    paths = [write(tmp_path / f"s{i}.wav", tone(200.0, 1.0)) for i in range(2)]
    out = list(embed_files(NaNs(), paths, EmbedOptions(batch_size=1)))
    assert all("NaN or infinite" in r.problem for r in out) and all(r.embedding is None for r in out)


def test_a_long_file_in_pieces_equals_one_pass_with_progress_inside_it():
    wave = tone(98.0, 5.0) + noise(5.0)  # 3 chunks of 2 s: 2 + 2 + 1 s
    model, progress = FakeModel(), []
    options = EmbedOptions(piece_chunks=1)
    [got] = embed_files(model, ["mix"], options, label="keys", load=lambda _: Decoded(wave),
                        on_progress=lambda *p: progress.append(p))
    whole = FakeModel().embed(wave)  # the fake's "keys" query embeds the mix as it is: pieces must add up to it
    assert got.problem is None and np.allclose(got.embedding.offsets, [0.0, 2.0, 4.0])
    assert np.allclose(got.embedding.chunks, whole.chunks) and np.allclose(got.embedding.weights, whole.weights)
    assert np.allclose(got.embedding.vector, whole.vector, atol=1e-6)
    assert progress == [(0, 1, 2.0), (0, 1, 4.0), (1, 1, 5.0)]
    assert model.query_calls == 3 and model.embedded == 0  # the query side, one call per piece


def test_join_pieces_weights_each_piece_by_its_valid_patches():
    model = FakeModel()
    wave = tone(150.0, 4.5)
    parts = [model.embed(wave[:CHUNK]), model.embed(wave[CHUNK:])]
    joined = join_pieces(parts, [0.0, CHUNK / SR])
    assert np.allclose(joined.vector, model.embed(wave).vector, atol=1e-6)


def test_the_loader_hook_passes_items_through_and_hands_back_what_it_computed(tmp_path):
    paths = [write(tmp_path / f"s{i}.wav", tone(200.0, 1.0)) for i in range(3)]
    model = FakeModel()

    def load(path):
        if path == paths[1]:
            return Decoded(None, "stored vectors")  # nothing to embed: passes through
        return Decoded(tone(200.0, 1.0), f"extra of {path.name}")

    out = list(embed_files(model, paths, load=load))
    assert [r.decoded.extra for r in out] == ["extra of s0.wav", "stored vectors", "extra of s2.wav"]
    assert out[1].embedding is None and out[1].problem is None and model.embedded == 2
