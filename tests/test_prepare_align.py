"""Preparation with face alignment, on all cores, checking every frame before writing anything."""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mpt_jax import face_align
from tfds_builders import discovery
from tfds_builders import fake_faces
from tfds_builders import fake_releases
from tfds_builders import me_builder
from tfds_builders import pipeline
from tfds_builders import prepare

tfds.disable_progress_bar()


def _cfg(name, builder_config, data_dir, manual_dir, **kw):
  d = dict(name=name, builder_config=builder_config, data_dir=str(data_dir),
           manual_dir=str(manual_dir), align='auto', align_margin=0.2, skip_bad_frames=False,
           prepare_workers=0)
  d.update(kw)
  return ml_collections.ConfigDict(d)


def _examples(cfg):
  ds = prepare.builder_for(cfg).as_data_source(split='train')
  return {e['clip'].decode(): e for e in ds}


def _stored_pngs(cfg):
  """Each clip's stored frames as their PNG bytes, undecoded."""
  from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  raw = input_pipeline._raw_frames_decoder()  # pylint: disable=protected-access
  ds = prepare.builder_for(cfg).as_data_source(split='train', decoders={'frames': raw})
  return {e['clip'].decode(): [bytes(f) for f in e['frames']] for e in ds}


def _check_level_and_scale(transform, placement, size=224):
  left, right = fake_faces.eyes_in_stored_frame(transform, placement)
  tilt = np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0]))
  assert abs(tilt) < 2.0
  target = face_align.target_eye_distance(size)
  assert abs(np.hypot(*(right - left)) / target - 1) < 0.05


def test_samm_at_real_size_prepares_into_aligned_faces(tmp_path):
  manual, placements = fake_faces.write_samm_faces(str(tmp_path / 'manual'))
  cfg = _cfg('samm', '5class', tmp_path / 'tfds', manual)
  report = prepare.prepare(cfg)
  ex = _examples(cfg)
  assert sorted(ex) == ['006_1_2', '006_3_5', '011_2_1', '011_4_2']
  for clip, placement in placements.items():
    e = ex[clip]
    assert e['align_method'] == b'landmarks' and e['align_frame'] == 0
    assert e['frames'][0].shape == (224, 224, 3)
    _check_level_and_scale(e['align_transform'], placement)
    # identical source frames -> identical stored frames: the alignment adds no motion
    assert all(np.array_equal(f, e['frames'][0]) for f in e['frames'])
  assert ex['011_4_2']['align_method'] == b'centre'
  # The large face is decoded in JPEG draft mode, every frame at the same reduction.
  assert face_align.draft_factor(ex['011_2_1']['align_transform']) == 2
  a = report['alignment']
  assert a['mode'] == 'auto' and a['counts']['landmarks'] == 3 and a['counts']['centre'] == 1
  assert a['no_face'] == ['samm/011/011_4_2']
  assert a['per_clip']['samm/006/006_1_2'] == 'landmarks@0'
  text = prepare.format_report(report)
  assert 'no face found in 1 clip(s) (centre crop): samm/011/011_4_2' in text
  sheet = os.path.join(prepare.builder_for(cfg).data_dir, pipeline.CONTACT_SHEET)
  assert os.path.join(report['data_dir'], a['contact_sheet']) == sheet and sheet in text
  with Image.open(sheet) as im:
    assert im.size[0] >= 2 * 96 and im.size[1] >= 96  # two subjects' blocks
    first_thumb = np.asarray(im.convert('L'))[16:16 + 96, :96]  # below the first block's label
  assert first_thumb.std() > 10  # a face, not the blank background


def test_casme3_at_real_size_prepares_into_aligned_faces(tmp_path):
  manual, placements = fake_faces.write_casme3_faces(str(tmp_path / 'manual'))
  cfg = _cfg('casme3', '7class', tmp_path / 'tfds', manual)
  report = prepare.prepare(cfg)
  ds = prepare.builder_for(cfg).as_data_source(split='train')
  got = {f"{e['subject'].decode()}/{e['clip'].decode()}": e for e in ds}
  assert sorted(got) == sorted(placements)
  for key, placement in placements.items():
    assert got[key]['align_method'] == b'landmarks'
    _check_level_and_scale(got[key]['align_transform'], placement)
  assert report['alignment']['counts']['landmarks'] == 3 and not report['alignment']['no_face']


def test_output_is_identical_for_any_number_of_workers(tmp_path):
  manual, _ = fake_faces.write_samm_faces(str(tmp_path / 'manual'))
  cfg1 = _cfg('samm', '5class', tmp_path / 'a', manual, prepare_workers=1)
  cfg2 = _cfg('samm', '5class', tmp_path / 'b', manual, prepare_workers=2)
  prepare.prepare(cfg1)
  prepare.prepare(cfg2)
  one, two = _examples(cfg1), _examples(cfg2)
  assert sorted(one) == sorted(two)
  for k in one:
    assert np.array_equal(one[k]['align_transform'], two[k]['align_transform'])
    assert all(np.array_equal(x, y) for x, y in zip(one[k]['frames'], two[k]['frames']))
  # The stored PNGs themselves, byte for byte (the record files may differ: TFDS serialises each
  # example's feature map in a per-process order).
  raw1, raw2 = _stored_pngs(cfg1), _stored_pngs(cfg2)
  assert raw1 == raw2 and all(len(v) > 1 for v in raw1.values())


def test_released_crops_are_kept_and_align_is_part_of_the_identity(tmp_path):
  manual = fake_releases.write_casme2(str(tmp_path / 'manual'))
  auto = _cfg('casme2', '5class_20140508', tmp_path / 'tfds', manual)
  prepare.prepare(auto)
  e = _examples(auto)['EP02_01f']
  assert e['align_method'] == b'none'  # CASME II Cropped is used as released
  src = me_builder.load_frame(os.path.join(manual, 'Cropped', 'Cropped', 'sub01', 'EP02_01f',
                                          'reg_img46.jpg'))
  np.testing.assert_array_equal(e['frames'][0], src)
  # The stored transform is the plain resize of the 12 x 16 fixture frame.
  np.testing.assert_allclose(e['align_transform'],
                             face_align.resize_transform(16, 12, 224, 224))
  always = _cfg('casme2', '5class_20140508', tmp_path / 'tfds', manual, align='always')
  b_auto, b_always = prepare.builder_for(auto), prepare.builder_for(always)
  assert b_auto.data_dir != b_always.data_dir and not b_always.is_prepared()
  report = prepare.prepare(always)
  assert report['alignment']['counts']['none'] == 0  # tiny random frames: centre crops
  assert _examples(always)['EP02_01f']['align_method'] == b'centre'
  margin = _cfg('casme2', '5class_20140508', tmp_path / 'tfds', manual, align='always', align_margin=0.3)
  assert prepare.builder_for(margin).data_dir not in (b_auto.data_dir, b_always.data_dir)
  with pytest.raises(discovery.DatasetLayoutError, match='config.data.align'):
    prepare.builder_for(_cfg('casme2', '5class_20140508', tmp_path / 'tfds', manual, align='sometimes'))


def test_raw_casme2_and_smic_are_aligned_under_auto():
  assert pipeline.should_align('auto', 'casme2', '/x/CASME2_RAW_selected/sub01/EP01/img46.jpg')
  assert not pipeline.should_align('auto', 'casme2', '/x/Cropped/sub01/EP01/reg_img46.jpg')
  assert pipeline.should_align('auto', 'smic', '/x/SMIC_all_raw/HS/s1/a/image059881.bmp')
  assert not pipeline.should_align('auto', 'smic', '/x/cropped/HS/s1/a/reg_image059881.bmp')
  assert pipeline.should_align('auto', 'samm', '/x/006/006_1_2/006_05562.jpg')
  assert pipeline.should_align('auto', 'casme3', '/x/spNO.1/a/color/3.jpg')
  assert not pipeline.should_align('never', 'samm', '/x/006/006_1_2/006_05562.jpg')
  assert pipeline.should_align('always', 'casme2', '/x/Cropped/sub01/EP01/reg_img46.jpg')


def test_unreadable_frame_is_refused_before_anything_is_written(tmp_path):
  manual = fake_releases.write_casme2(str(tmp_path / 'manual'))
  bad = os.path.join(manual, 'Cropped', 'Cropped', 'sub07', 'EP06_02_01', 'reg_img102.jpg')
  fake_releases.corrupt(bad)
  cfg = _cfg('casme2', '5class_20140508', tmp_path / 'tfds', manual)
  with pytest.raises(me_builder.CorruptImageError) as err:
    prepare.prepare(cfg)
  msg = str(err.value)
  assert bad in msg and '\n' not in msg and 'skip_bad_frames' in msg
  assert not prepare.builder_for(cfg).is_prepared()
  # Nothing but TFDS's own builder-config note (.config/metadata.json): no frames, no records.
  leftovers = [f for _, _, fs in os.walk(tmp_path / 'tfds') for f in fs if f != 'metadata.json']
  assert not leftovers, leftovers


def test_skip_bad_frames_skips_and_reports(tmp_path):
  manual = fake_releases.write_casme2(str(tmp_path / 'manual'))
  folder = os.path.join(manual, 'Cropped', 'Cropped', 'sub07', 'EP06_02_01')
  fake_releases.corrupt(os.path.join(folder, 'reg_img102.jpg'))
  for n in (46, 47, 48, 49, 50, 51):  # EP02_01f keeps one readable frame: skipped as a clip
    fake_releases.corrupt(os.path.join(manual, 'Cropped', 'Cropped', 'sub01', 'EP02_01f',
                                  f'reg_img{n}.jpg'))
  cfg = _cfg('casme2', '5class_20140508', tmp_path / 'tfds', manual, skip_bad_frames=True)
  report = prepare.prepare(cfg)
  ex = _examples(cfg)
  assert list(ex['EP06_02_01']['frame_numbers']) == [100, 101, 103, 104]
  assert len(ex['EP06_02_01']['frames']) == 4
  assert 'EP02_01f' not in ex and report['num_clips'] == 6
  issues = [i for i in report['issues'] if 'unreadable frame' in i['problem']]
  assert len(issues) == 7 and all(i['action'] == 'skipped the frame' for i in issues)
  assert any(i['where'] == 'casme2/sub01/EP02_01f' and i['action'] == 'skipped'
             for i in report['issues'])


def test_data_dir_follows_tfds_data_dir(monkeypatch):
  from configs import common as config_common  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('TFDS_DATA_DIR', '/data/tfds_here')
  assert config_common.get_config().data.data_dir == '/data/tfds_here'
  monkeypatch.delenv('TFDS_DATA_DIR')
  assert config_common.get_config().data.data_dir == '~/tensorflow_datasets'


def test_format_alignment_lists_haar_and_no_face_clips():
  report = {'alignment': pipeline.alignment_summary(
      'auto', 0.2, ['samm/006/a', 'samm/006/b', 'samm/007/c'],
      [{'method': 'landmarks', 'frame': 0}, {'method': 'haar', 'frame': 2},
       {'method': 'centre', 'frame': -1}], pipeline.CONTACT_SHEET)}
  text = pipeline.format_alignment(report, '/d')
  assert '1 by landmarks, 1 by Haar box, 1 centre crop' in text
  assert 'Haar box only (no landmarks, no rotation) in 1 clip(s): samm/006/b' in text
  assert 'no face found in 1 clip(s) (centre crop): samm/007/c' in text
  assert '/d/contact_sheet.png' in text
