"""Tempo and key filters, the Camelot wheel and the compatibility score (stemjepa.analysis.compat)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from stemjepa.analysis.compat import (
    FilterError,
    camelot,
    compatibility,
    key_fit,
    key_name,
    parse_bpm_filter,
    parse_key_filter,
    tempo_fit,
)
from stemjepa.errors import StemJepaError


def tags(bpm, key):
    """What compatibility reads of an Analysis."""
    return SimpleNamespace(bpm=bpm, key=key)


def test_bpm_filter_default_tolerance_is_four_percent():
    f = parse_bpm_filter("120")
    assert (f.low, f.high) == pytest.approx((115.2, 124.8))
    assert f.accepts(120) and f.accepts(124.7) and f.accepts(115.3)
    assert not f.accepts(125.0) and not f.accepts(110)


@pytest.mark.parametrize("text, inside, outside", [
    ("120+-3", [117, 123], [116.9, 123.1]),
    ("120 ± 3 bpm", [117, 123], [116.9, 123.1]),
    ("120:2%", [117.6, 122.4], [117.5, 122.5]),
    ("120+-2%", [117.6, 122.4], [117.5, 122.5]),
    ("118-124", [118, 124], [117.9, 124.1]),
])
def test_bpm_filter_tolerance_in_bpm_percent_or_range(text, inside, outside):
    f = parse_bpm_filter(text)
    assert all(f.accepts(b) for b in inside) and not any(f.accepts(b) for b in outside)


def test_bpm_filter_matches_half_and_double_time_unless_turned_off():
    f = parse_bpm_filter("120+-2")
    assert f.accepts(60) and f.accepts(240) and f.accepts(59.2) and f.accepts(243.9)
    assert not f.accepts(90) and not f.accepts(180) and not f.accepts(30)  # only one octave either way
    strict = parse_bpm_filter("120+-2!")
    assert strict.accepts(121) and not strict.accepts(60) and not strict.accepts(240)
    np.testing.assert_array_equal(f.mask(np.array([60.0, 90.0, 120.0, np.nan])), [True, False, True, True])


def test_stems_without_beat_or_key_are_neutral_to_filters():
    assert parse_bpm_filter("120").accepts(None)
    assert parse_key_filter("Am").accepts(None)


@pytest.mark.parametrize("text, keys", [
    ("A minor", {"A minor"}),
    ("am", {"A minor"}),
    ("8A", {"A minor"}),
    ("Am:relative", {"A minor", "C major"}),
    ("8A:camelot", {"A minor", "C major", "D minor", "E minor"}),
    ("C major:camelot", {"C major", "A minor", "F major", "G major"}),
    ("Am+-2", {"G minor", "G# minor", "A minor", "A# minor", "B minor"}),
    ("Am:1", {"G# minor", "A minor", "A# minor"}),
    ("Bb major", {"A# major"}),
])
def test_key_filter_same_relative_camelot_and_semitones(text, keys):
    f = parse_key_filter(text)
    assert f.keys() == keys
    assert all(f.accepts(k) for k in keys) and not f.accepts("F# major")


def test_key_filter_accepts_any_spelling_of_a_kept_key():
    f = parse_key_filter("Am:relative")
    assert f.accepts("A minor") and f.accepts("Am") and f.accepts("8B") and f.accepts("c major")
    assert not f.accepts("A major") and not f.accepts("not a key")


@pytest.mark.parametrize("text, code", [
    ("C major", "8B"), ("A minor", "8A"), ("G major", "9B"), ("E minor", "9A"), ("F major", "7B"),
    ("B major", "1B"), ("G# minor", "1A"), ("Db major", "3B"), ("F# minor", "11A"), ("D dorian", "7A"),
])
def test_camelot_codes(text, code):
    assert camelot(text) == code
    assert key_name(code) == key_name(text)


def test_key_names_use_sharps_and_map_modes_to_major_or_minor():
    assert key_name("Eb major") == "D# major" and key_name("bbm") == "A# minor"
    assert key_name("G mixolydian") == "G major" and key_name("E phrygian") == "E minor"
    assert key_name("H minor") is None and key_name("") is None and key_name(None) is None


@pytest.mark.parametrize("text, problem", [
    ("fast", "not a tempo"), ("", "not a tempo"), ("0", "outside 20-400"), ("5000", "outside 20-400"),
    ("120+-200", "no tempo"), ("60-130", "octave"), ("120:60%", "octave"), ("nan", "not a tempo"),
])
def test_bad_bpm_filter_is_refused_naming_the_text(text, problem):
    with pytest.raises(FilterError, match=problem) as info:
        parse_bpm_filter(text)
    assert isinstance(info.value, StemJepaError) and repr(text) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, problem", [
    ("H minor", "not a key"), ("", "empty"), ("Am:sideways", "unknown match"), ("Am+-9", "more than 6"),
    ("13A", "not a key"), ("A minor minor", "not a key"),
])
def test_bad_key_filter_is_refused_naming_the_text(text, problem):
    with pytest.raises(FilterError, match=problem) as info:
        parse_key_filter(text)
    assert isinstance(info.value, StemJepaError) and repr(text) in str(info.value)
    with pytest.raises(FilterError, match="not a key"):
        camelot("H minor")


def test_tempo_fit_is_half_double_aware():
    assert tempo_fit(120, 120) == 1.0
    assert tempo_fit(120, 60) == pytest.approx(0.85) and tempo_fit(120, 240) == pytest.approx(0.85)
    assert 0.5 < tempo_fit(120, 124) < 1 and tempo_fit(120, 100) < 0.01
    assert tempo_fit(None, 120) == 1.0 and tempo_fit(120, None) == 1.0


def test_key_fit_follows_the_camelot_wheel():
    same, rel, neighbour, diagonal, far = (key_fit("A minor", k) for k in
                                           ("A minor", "C major", "E minor", "G major", "D# minor"))
    assert same == 1.0 > rel > neighbour > diagonal > far == 0.0
    assert key_fit("A minor", None) == 1.0 == key_fit(None, "C major")  # drums are key-neutral


def test_compatibility_combines_tempo_and_key_in_0_1():
    mix = tags(120.0, "A minor")
    assert compatibility(mix, tags(120.0, "A minor")) == 1.0
    assert compatibility(mix, tags(60.0, None)) == pytest.approx(0.85)  # half-time drums
    assert compatibility(mix, tags(None, "C major")) == pytest.approx(0.9)  # a beatless pad in the relative key
    assert compatibility(mix, tags(95.0, "D# minor")) == 0.0
    values = [compatibility(mix, tags(b, k)) for b in (60, 90, 119, 121, 200, None)
              for k in ("A minor", "F# major", None)]
    assert all(0.0 <= v <= 1.0 for v in values)
