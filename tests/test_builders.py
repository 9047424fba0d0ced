"""TFDS builders on fixture folders in the real layouts, with every documented quirk."""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_builders import casme2
from tfds_builders import casme3
from tfds_builders import discovery
from tfds_builders import fake_releases
from tfds_builders import me_builder
from tfds_builders import megc2019_composite as composite
from tfds_builders import prepare
from tfds_builders import samm
from tfds_builders import sheets
from tfds_builders import smic

tfds.disable_progress_bar()


def _problems(report):
  return {(i['where'], i['problem'], i['action']) for i in report.issues}


def _find(report, needle):
  return [i for i in report.issues if needle in i['where'] or needle in i['problem']]


OLD_SHEET = casme2.Casme2Config(name='5class_20140508', sheet='20140508')


@pytest.mark.parametrize('subject_as_text', [False, True])
def test_casme2_scan_exact(tmp_path, subject_as_text):
  root = fake_releases.write_casme2(str(tmp_path), subject_as_text=subject_as_text)
  clips, report = casme2.scan(root, OLD_SHEET)
  got = {(c.subject, c.clip): c for c in clips}
  assert sorted(got) == sorted([('sub01', 'EP02_01f'), ('sub01', 'EP09f'), ('sub02', 'EP03_02'),
                                ('sub04', 'EP12_01f'), ('sub05', 'EP19_05f'),
                                ('sub12', 'EP09_06'), ('sub07', 'EP06_02_01')])
  c = got[('sub01', 'EP02_01f')]
  assert (c.label, c.onset, c.apex, c.offset, c.frame_numbers) == (
      'happiness', 46, 49, 52, list(range(46, 53)))
  assert c.apex_index == 3 and c.fps == 200.0 and c.action_units == '12'
  assert [os.path.basename(p) for p in c.frames][:2] == ['reg_img46.jpg', 'reg_img47.jpg']
  assert got[('sub04', 'EP12_01f')].apex == 265  # '/' -> midpoint
  # Apex 71 after offset 70, frame 71 on disk: kept, the offset moves to it.
  e = got[('sub12', 'EP09_06')]
  assert (e.onset, e.apex, e.offset, e.frame_numbers) == (66, 71, 71, list(range(66, 72)))
  assert e.apex_index == 5
  assert got[('sub02', 'EP03_02')].frame_numbers == [131, 132, 134, 135, 136]
  assert got[('sub01', 'EP09f')].frame_numbers == list(range(10, 16))
  assert got[('sub05', 'EP19_05f')].action_units == '4+7+L10'
  assert report.source['sheet_version'] == '20140508'
  assert len(_find(report, "apex is '/'")) == 1
  assert [i['action'] for i in _find(report, 'apex 71 after offset 70; frames 71..71 are on disk')
          ] == ['offset set to the apex 71']
  assert len(_find(report, '1 missing frame(s) in 131..136: 133')) == 1
  assert len(_find(report, 'outside onset..offset 10..15')) == 1
  assert [i['action'] for i in _find(report, 'no folder')] == ['skipped']
  assert [i['where'] for i in _find(report, 'has no row')] == ['sub03/EP07_04']
  # The fear row is not part of the 5-class protocol: dropped, and said so.
  assert [(i['where'], i['action']) for i in _find(report, "emotion 'fear'")] == [
      ('CASME2-coding-20140508.xlsx row 5 (sub02/EP04_02)', 'skipped (not in the protocol)')]
  assert len(report.issues) == 7


def test_casme2_all_and_raw_variants(tmp_path):
  root = fake_releases.write_casme2(str(tmp_path), doubled=False, raw=True,
                               sheet_name='CASME2-coding-20190701.xlsx')
  clips, report = casme2.scan(root, casme2.Casme2Config(name='all', classes=casme2.ALL_CLASSES,
                                                        frames='raw'))
  assert len(clips) == 8 and {c.label for c in clips} >= {'fear'}
  assert report.source['sheet_version'] == '20190701'
  assert report.source['frames'] == 'CASME2_RAW_selected'
  assert report.source['frame_variant'] == 'raw'
  with pytest.raises(discovery.DatasetLayoutError, match='Cropped/subXX/EPxx/reg_imgN.jpg'):
    casme2.scan(root, casme2.Casme2Config(name='5class'))
  with pytest.raises(discovery.DatasetLayoutError, match='CASME2-coding-20140508.xlsx'):
    casme2.scan(root, casme2.Casme2Config(name='5class_20140508', sheet='20140508', frames='raw'))


def test_samm_scan_exact(tmp_path):
  root = fake_releases.write_samm(str(tmp_path))
  clips, report = samm.scan(str(tmp_path), samm.SammConfig(name='5class'))
  got = {c.clip: c for c in clips}
  assert sorted(got) == ['006_1_2', '006_3_5', '007_3_1', '028_4_1', '037_4_1']
  assert got['006_1_2'].frame_numbers == list(range(5562, 5568))
  assert os.path.basename(got['006_1_2'].frames[0]) == '006_05562.jpg'
  assert os.path.basename(got['006_3_5'].frames[0]) == '006_1787.jpg'
  assert got['007_3_1'].frame_numbers == list(range(998, 1004))  # natural, not lexicographic
  # Apex 1143 after offset 1134 and not on disk: the midpoint.
  assert got['028_4_1'].apex == 1132 and got['028_4_1'].label == 'contempt'
  assert got['028_4_1'].offset == 1134
  assert got['007_3_1'].action_units == '12+15'
  assert got['037_4_1'].label == 'other' and got['006_1_2'].subject == '006'
  assert len(_find(report, 'apex 1143 outside')) == 1
  assert [i['where'] for i in _find(report, "emotion 'disgust'")] == [
      'SAMM_Micro_FACS_Codes_v2.xlsx row 19 (024/024_2_1)']
  assert len(report.issues) == 2
  assert report.source['sheet'] == os.path.join('SAMM', 'SAMM', 'SAMM_Micro_FACS_Codes_v2.xlsx')
  assert report.source['frames'] == os.path.join('SAMM', 'SAMM')
  frame = me_builder.load_frame(got['006_1_2'].frames[0], 16)
  assert frame.shape == (16, 16, 3) and np.array_equal(frame[..., 0], frame[..., 2])
  all_clips, _ = samm.scan(root, samm.SammConfig(name='all', classes=samm.ALL_CLASSES))
  assert len(all_clips) == 6


def test_smic_scan_exact(tmp_path):
  fake_releases.write_smic(str(tmp_path))
  clips, report = smic.scan_modality(str(tmp_path), 'HS')
  got = {c.clip: c for c in clips}
  assert sorted(got) == ['s19_sur_01', 's1_ne_01', 's1_po_01', 's20_po_01', 's2_sur_01',
                         's5_ne_01']
  assert got['s19_sur_01'].frame_numbers == [33012345, 33012346, 33012347]
  assert got['s20_po_01'].frame_numbers == [99998, 99999, 100000, 100001, 100002]
  assert os.path.basename(got['s2_sur_01'].frames[0]) == 'reg_image059881.bmp'
  assert got['s5_ne_01'].onset == 1038175 and got['s5_ne_01'].subject == 's5'
  assert got['s1_ne_01'].apex == 559742 and got['s1_ne_01'].fps == 100.0
  assert not report.issues  # non_micro is ignored silently
  with pytest.raises(discovery.DatasetLayoutError, match='VIS/s<N>/micro'):
    smic.scan_modality(str(tmp_path), 'VIS')


def test_smic_vis_frames_and_fps(tmp_path):
  fake_releases.write_smic(str(tmp_path), modality='VIS')
  clips, _ = smic.scan_modality(str(tmp_path), 'VIS')
  got = {c.clip: c for c in clips}
  assert os.path.basename(got['s2_sur_01'].frames[0]) == 'reg_59881.bmp'
  assert got['s1_ne_01'].fps == 25.0 and len(clips) == 6


def test_synthetic_clips_are_subtle_local_and_deterministic():
  from tfds_builders import synthetic  # pylint: disable=g-import-not-at-top
  cfg = synthetic.SyntheticConfig(name='t')
  regions = {'surprise': slice(14, 26), 'happiness': slice(40, 54), 'others': slice(21, 30)}
  firsts = []
  for emotion, rows in regions.items():
    frames, onset, apex, offset = synthetic.make_clip(0, emotion, 0, cfg)
    again = synthetic.make_clip(0, emotion, 0, cfg)[0]
    np.testing.assert_array_equal(frames, again)
    assert frames.shape[1:] == (64, 64, 3) and offset - onset + 1 == len(frames)
    change = np.abs(frames[apex - onset].astype(float) - frames[0].astype(float)).mean(-1)
    profile = change[:, 16:48].mean(1)  # central columns: away from the jittering face outline
    assert rows.start <= int(np.argmax(profile)) < rows.stop, (emotion, profile.round(1))
    assert change.max() < 120  # and small: sub-pixel to 2 px of a soft edge
    firsts.append(frames[0].astype(float))
  # Onset frames of one subject look alike whatever the class (noise and jitter only).
  assert np.abs(firsts[0] - firsts[1]).mean() < 6.0


def test_casme3_scan_exact(tmp_path):
  root = fake_releases.write_casme3(str(tmp_path))
  cfg = casme3.Casme3(config='3class', data_dir=str(tmp_path / 'd')).builder_config
  clips, report = casme3.scan(root, cfg)
  got = {(c.subject, c.clip): c for c in clips}
  assert sorted(got) == [('spNO.1', 'b_166'), ('spNO.1', 'j_28'), ('spNO.2', 'a_10'),
                         ('spNO.2', 'c_50')]
  assert got[('spNO.1', 'b_166')].label == 'negative'
  assert got[('spNO.1', 'b_166')].frame_numbers == list(range(166, 173))
  # Apex 49 before onset 50: the long video holds frame 49, which is no evidence: midpoint.
  assert got[('spNO.2', 'c_50')].apex == 51 and got[('spNO.2', 'c_50')].onset == 50
  assert len(_find(report, 'apex 49 outside')) == 1
  assert [i['action'] for i in _find(report, "emotion 'others'")] == [
      'skipped (not in the protocol)']
  assert len(report.issues) == 2
  cfg4 = casme3.Casme3(config='4class', data_dir=str(tmp_path / 'd')).builder_config
  clips4, _ = casme3.scan(root, cfg4)
  assert len(clips4) == 5 and ('others' in {c.label for c in clips4})


def test_composite_reproduces_official_structure(tmp_path):
  root, _ = fake_releases.write_composite_release(str(tmp_path))
  clips, report = composite.scan(root)
  assert len(clips) == 442
  assert len({c.subject for c in clips}) == 68
  per_class = {k: sum(c.label == k for c in clips) for k in composite.CLASSES}
  assert per_class == {'negative': 250, 'positive': 109, 'surprise': 83}
  per_ds = {d: sum(c.dataset == d for c in clips) for d in ('casme2', 'samm', 'smic')}
  assert per_ds == {'casme2': 145, 'samm': 133, 'smic': 164}
  assert report.source['membership'].startswith('built-in')
  assert not [i for i in report.issues if 'not found' in i['problem']]


def test_composite_uses_official_csv_ids(tmp_path):
  fake_releases.write_casme2(str(tmp_path))
  fake_releases.write_samm(str(tmp_path))
  fake_releases.write_smic(str(tmp_path))
  fake_releases.write_gt_csv(str(tmp_path / 'combined_3class_gt.csv'), [
      ('casme2', 'sub01', 'EP02_01f', 1), ('smic', 's01', 's01_ne_01', 0),
      ('smic', 's20', 's20_po_01', 1), ('samm', '6', '006_1_2', 0), ('samm', '37', '037_9_9', 0)])
  clips, report = composite.scan(str(tmp_path))
  keys = sorted((c.dataset, c.subject, c.clip, c.label) for c in clips)
  assert keys == [('casme2', 'sub01', 'EP02_01f', 'positive'),
                  ('samm', '006', '006_1_2', 'negative'),
                  ('smic', 's1', 's1_ne_01', 'negative'), ('smic', 's20', 's20_po_01', 'positive')]
  assert [i['where'] for i in report.issues if 'not found' in i['problem']] == ['samm/037/037_9_9']


def _data_config(name, builder_config, data_dir, manual_dir):
  return ml_collections.ConfigDict(dict(name=name, builder_config=builder_config,
                                        data_dir=str(data_dir), manual_dir=str(manual_dir)))


def test_prepare_casme2_end_to_end_and_idempotent(tmp_path):
  manual = fake_releases.write_casme2(str(tmp_path / 'manual'))
  cfg = _data_config('casme2', '5class_20140508', tmp_path / 'tfds', manual)
  report = prepare.prepare(cfg)
  assert report['num_clips'] == 7 and report['num_subjects'] == 6
  assert report['per_class'] == {'happiness': 1, 'surprise': 1, 'disgust': 3, 'repression': 1,
                                 'others': 1}
  assert len(report['issues']) == 7
  status = report.pop(prepare.STATUS_KEY)
  assert status['status'] == 'prepared'
  text = prepare.format_report(report)
  assert "apex is '/' -> apex set to the midpoint 265" in text
  builder = prepare.builder_for(cfg)
  ds = builder.as_data_source(split='train')
  assert len(ds) == 7
  ex = {e['clip'].decode(): e for e in ds}
  e = ex['EP02_01f']
  assert len(e['frames']) == 7 and e['frames'][0].shape == (224, 224, 3)
  assert e['subject'] == b'sub01' and e['apex_index'] == 3 and e['label'] == 0
  # Stored pixels equal the resized source frame (PNG is lossless).
  src = me_builder.load_frame(os.path.join(manual, 'Cropped', 'Cropped', 'sub01', 'EP02_01f',
                                          'reg_img46.jpg'))
  np.testing.assert_array_equal(e['frames'][0], src)
  # A second run without a manual_dir reuses the data, says so, and returns the same report.
  mtime = os.path.getmtime(builder.data_dir)
  again = prepare.prepare(_data_config('casme2', '5class_20140508', tmp_path / 'tfds', ''))
  assert again.pop(prepare.STATUS_KEY)['status'] == 'reused'
  assert again == report
  # With the recorded manual_dir too.
  again = prepare.prepare(cfg)
  assert again.pop(prepare.STATUS_KEY)['status'] == 'reused' and again == report
  assert os.path.getmtime(builder.data_dir) == mtime


def test_prepare_errors_are_clear(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(discovery.DatasetLayoutError, match='empty'):
    prepare.prepare(_data_config('samm', '5class', tmp_path / 'tfds', empty))
  with pytest.raises(discovery.DatasetLayoutError, match='does not exist'):
    prepare.prepare(_data_config('samm', '5class', tmp_path / 'tfds', tmp_path / 'nope'))
  with pytest.raises(discovery.DatasetLayoutError, match='no manual_dir'):
    prepare.prepare(_data_config('samm', '5class', tmp_path / 'tfds', ''))
  wrong = fake_releases.write_smic(str(tmp_path / 'smic_instead'))
  with pytest.raises(discovery.DatasetLayoutError, match='Micro_FACS_Codes'):
    prepare.prepare(_data_config('samm', '5class', tmp_path / 'tfds', wrong))
  with pytest.raises(discovery.DatasetLayoutError, match='unknown builder config'):
    prepare.builder_for(_data_config('samm', '7class', tmp_path / 'tfds', wrong))
  manual = fake_releases.write_samm(str(tmp_path / 'samm'))
  fake_releases.corrupt(os.path.join(manual, '006', '006_1_2', '006_05563.jpg'))
  with pytest.raises(Exception, match='006_05563.jpg'):
    prepare.prepare(_data_config('samm', '5class', tmp_path / 'tfds2', manual))


def test_prepare_synthetic_small(tmp_path):
  cfg = _data_config('synthetic_me', 'small', tmp_path / 'tfds', '')
  report = prepare.prepare(cfg)
  assert report['num_clips'] == 30 and report['num_subjects'] == 3
  ds = prepare.builder_for(cfg).as_data_source(split='train')
  e = ds[0]
  assert e['frames'][0].shape == (64, 64, 3)
  assert 10 <= len(e['frames']) <= 16
  assert 0 <= e['apex_index'] < len(e['frames'])


# ------------------------------------------------------------------ annotation and layout quirks
def test_apex_before_onset_on_disk_moves_onset(tmp_path):
  """Mirrored: an apex before the onset whose frame is in the clip folder."""
  row = (9, 'EP05_05', 20, 18, 24, 12, 'happiness', range(18, 25))
  root = fake_releases.write_casme2(str(tmp_path), extra_rows=[row])
  clips, report = casme2.scan(root, OLD_SHEET)
  c = {c.clip: c for c in clips}['EP05_05']
  assert (c.onset, c.apex, c.offset, c.frame_numbers[0], c.apex_index) == (18, 18, 24, 18, 0)
  assert [i['action'] for i in _find(report, 'apex 18 before onset 20')] == [
      'onset set to the apex 18']


def test_cropped_and_selected_are_decided_below_manual_dir(tmp_path):
  """Words in the path above manual_dir do not choose the frame variant."""
  manual = str(tmp_path / 'my_cropped_data')
  base = fake_releases.write_smic(manual)  # SMIC_all_cropped/HS/...
  for subj, emo, clip, first, count in fake_releases.SMIC_CLIPS:
    fake_releases.write_frames(os.path.join(base, 'SMIC_all_raw', 'HS', subj, 'micro', emo, clip),
                          range(first, first + count), 'image{:06d}.bmp')
  clips, report = smic.scan_modality(base, 'HS')
  assert report.source['frames'] == os.path.join('SMIC_all_cropped', 'HS')
  assert report.source['frame_variant'] == 'cropped'
  assert os.path.basename(clips[0].frames[0]).startswith('reg_image')
  # Only raw frames: said so.
  only_raw = str(tmp_path / 'cropped_sets' / 'SMIC')
  for subj, emo, clip, first, count in fake_releases.SMIC_CLIPS:
    fake_releases.write_frames(os.path.join(only_raw, 'SMIC_all_raw', 'HS', subj, 'micro', emo, clip),
                          range(first, first + count), 'image{:06d}.bmp')
  assert smic.scan_modality(only_raw, 'HS')[1].source['frame_variant'] == 'raw'
  # CASME II raw: CASME2_RAW_selected (onset..offset) over the full CASME2-RAW sequences, also
  # when manual_dir itself sits under a folder named "selected".
  root = fake_releases.write_casme2(str(tmp_path / 'selected_sets'), doubled=False, raw=True,
                               sheet_name='CASME2-coding-20190701.xlsx')
  for subj, name, *_, frames in fake_releases.CASME2_ROWS:
    if frames is not None:
      fake_releases.write_frames(os.path.join(root, 'CASME2-RAW', f'sub{subj:02d}', name),
                            range(1, max(frames) + 5), 'img{}.jpg')
  _, report = casme2.scan(root, casme2.Casme2Config(name='5class_raw', frames='raw'))
  assert report.source['frames'] == 'CASME2_RAW_selected'


def _sheet_files(tmp_path):
  """(name, bytes) of damaged or misnamed workbooks."""
  good_xlsx = tmp_path / 'good.xlsx'
  fake_releases.write_casme2_sheet(str(good_xlsx), fake_releases.CASME2_ROWS)
  good_xls = tmp_path / 'good.xls'
  fake_releases.write_casme2_sheet(str(good_xls), fake_releases.CASME2_ROWS)
  x, xl = good_xlsx.read_bytes(), good_xls.read_bytes()
  return {'truncated.xls': xl[:len(xl) // 2], 'garbage.xls': b'<html>not a workbook</html>',
          'empty.xls': b'', 'truncated.xlsx': x[:len(x) // 2], 'garbage.xlsx': b'\x00' * 100,
          'ole_garbage.xls': xl[:8] + b'\x00' * 600}


def test_damaged_sheets_are_one_clear_error(tmp_path, capfd):
  """Damaged or misnamed sheets name the file; xlrd prints nothing."""
  for name, data in _sheet_files(tmp_path).items():
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(discovery.DatasetLayoutError) as e:
      sheets.read_sheet(str(path))
    assert str(path) in str(e.value) and '\n' not in str(e.value), (name, e.value)
  out, err = capfd.readouterr()
  assert 'WARNING' not in out + err
  # An .xlsx saved under an .xls name (and the other way round) is read by its content.
  good = tmp_path / 'good.xlsx'
  (tmp_path / 'xlsx_named.xls').write_bytes(good.read_bytes())
  (tmp_path / 'xls_named.xlsx').write_bytes((tmp_path / 'good.xls').read_bytes())
  want = sheets.read_sheet(str(good))
  assert sheets.read_sheet(str(tmp_path / 'xlsx_named.xls'))[0] == want[0]
  header, rows = sheets.read_sheet(str(tmp_path / 'xls_named.xlsx'))
  assert header[:2] == want[0][:2] and len(rows) == len(want[1])


def test_legacy_xls_sheet_and_worksheet_choice(tmp_path):
  """The CASME2_label_Ver_2.xls config reads a real .xls; a missing worksheet name is clear."""
  root = fake_releases.write_casme2(str(tmp_path), sheet_name='CASME2_label_Ver_2.xls')
  clips, report = casme2.scan(root, casme2.Casme2Config(name='5class_ver2', sheet='ver2'))
  assert len(clips) == 7 and report.source['sheet_version'] == 'ver2'
  wb, _ = fake_releases.samm_workbook()
  wb.active.title = 'Sheet1'
  wb.create_sheet('Notes')
  wb.save(tmp_path / 'two.xlsx')
  with pytest.raises(discovery.DatasetLayoutError,
                     match=r"no worksheet named 'MICRO_ONLY' and several"):
    sheets.read_sheet(str(tmp_path / 'two.xlsx'), sheet='MICRO_ONLY')


def test_samm_sheet_choice(tmp_path):
  """._ files ignored, the released name preferred, ambiguity refused."""
  root = fake_releases.write_samm(str(tmp_path), nested=False)
  (tmp_path / 'SAMM' / '._SAMM_Micro_FACS_Codes_v2.xlsx').write_bytes(b'\x00\x05\x16\x07 mac')
  wb, ws = fake_releases.samm_workbook()  # another version that sorts first, no data rows
  wb.save(tmp_path / 'SAMM' / 'SAMM_20181215_Micro_FACS_Codes_v2.xlsx')
  clips, report = samm.scan(root, samm.SammConfig(name='5class'))
  assert report.source['sheet'] == 'SAMM_Micro_FACS_Codes_v2.xlsx' and len(clips) == 5
  os.remove(os.path.join(root, 'SAMM_Micro_FACS_Codes_v2.xlsx'))
  ws.cell(row=15, column=1, value='006')
  wb.save(tmp_path / 'SAMM' / 'SAMM_old_Micro_FACS_Codes.xlsx')
  with pytest.raises(discovery.DatasetLayoutError,
                     match=r"several different FACS codes sheet files .*'SAMM_20181215_Micro_FACS_"
                           r"Codes_v2.xlsx', 'SAMM_old_Micro_FACS_Codes.xlsx'"):
    samm.scan(root, samm.SammConfig(name='5class'))
  # Only the ._ file: no sheet (it is not taken for one).
  for name in ('SAMM_20181215_Micro_FACS_Codes_v2.xlsx', 'SAMM_old_Micro_FACS_Codes.xlsx'):
    os.remove(os.path.join(root, name))
  with pytest.raises(discovery.DatasetLayoutError, match='no SAMM_Micro_FACS_Codes_v2.xlsx'):
    samm.scan(root, samm.SammConfig(name='5class'))


def test_emotion_aliases_and_dropped_rows_reported(tmp_path):
  """'Other'/'others', 'Happy' map onto the sheet's spelling; unknown reported."""
  rows = [(8, 'EP01_01', 5, 6, 8, 4, 'Other', range(5, 9)),
          (8, 'EP01_02', 5, 6, 8, 4, 'Happy ', range(5, 9)),
          (8, 'EP01_03', 5, 6, 8, 4, 'contempt', range(5, 9))]
  root = fake_releases.write_casme2(str(tmp_path), extra_rows=rows)
  clips, report = casme2.scan(root, OLD_SHEET)
  got = {c.clip: c.label for c in clips if c.subject == 'sub08'}
  assert got == {'EP01_01': 'others', 'EP01_02': 'happiness'}
  assert [(i['problem'], i['action']) for i in _find(report, 'EP01_03')] == [
      ("emotion 'contempt' is none of the known ['happiness', 'surprise', 'disgust', 'repression', "
       "'others', 'fear', 'sadness']", 'skipped')]
  # Every sheet row is either a clip or a report entry.
  header, sheet_rows = sheets.read_sheet(report_path := os.path.join(root, report.source['sheet']))
  dropped = {i['where'].split(' (')[0] for i in report.issues if 'row' in i['where']
             and i['action'].startswith('skipped')}
  assert len(clips) + len(dropped) == len(sheet_rows), (report_path, header)


def test_drop_slash_apex_counts_on_the_published_casme2_counts(tmp_path):
  """The README counts, on fixtures with the published per-class counts."""
  counts = {}
  for sheet, config in (('20140508', '5class_20140508'), ('20190701', '5class')):
    root = fake_releases.write_casme2_release(str(tmp_path / sheet), sheet)
    base = {c.name: c for c in casme2.Casme2.BUILDER_CONFIGS}[config]
    for drop in (False, True):
      import dataclasses  # pylint: disable=g-import-not-at-top
      clips, report = casme2.scan(root, dataclasses.replace(base, drop_slash_apex=drop))
      counts[(sheet, drop)] = len(clips)
      assert ('EP12_01f' in {c.clip for c in clips}) is not drop
      if drop:
        assert [i['action'] for i in _find(report, "apex is '/'")] == ['skipped (drop_slash_apex)']
      per = {k: sum(c.label == k for c in clips) for k in casme2.FIVE_CLASSES}
      assert per == {'happiness': 32, 'surprise': 25 if sheet == '20140508' else 28,
                     'disgust': 63 - drop, 'repression': 27, 'others': 99}
      assert len({c.subject for c in clips}) == 26
      if sheet == '20140508':  # sub12/EP09_06: apex 111 after offset 106, frames to 111 on disk
        e = {c.clip: c for c in clips if c.subject == 'sub12'}['EP09_06']
        assert (e.apex, e.offset, len(e.frames)) == (111, 111, 46)
  assert counts == {('20140508', False): 246, ('20140508', True): 245,
                    ('20190701', False): 249, ('20190701', True): 248}


def test_drop_slash_apex_config_prepares_its_own_variant(tmp_path):
  manual = fake_releases.write_casme2(str(tmp_path / 'manual'))
  cfg = _data_config('casme2', '5class_20140508', tmp_path / 'tfds', manual)
  cfg.drop_slash_apex = True
  report = prepare.prepare(cfg)
  assert report['num_clips'] == 6
  assert report[prepare.STATUS_KEY]['record']['options'] == {'drop_slash_apex': True,
                                                              'align': 'auto', 'align_margin': 0.2}
  assert '5class_20140508_drop_slash_apex' in report[prepare.STATUS_KEY]['data_dir']
  cfg.drop_slash_apex = False
  assert prepare.prepare(cfg)['num_clips'] == 7  # the default variant, prepared beside it
  smic_cfg = _data_config('smic', 'hs_3class', tmp_path / 'tfds', manual)
  smic_cfg.drop_slash_apex = True
  with pytest.raises(discovery.DatasetLayoutError, match='no apex annotation'):
    prepare.builder_for(smic_cfg)


def test_casme3_same_onset_twice_in_one_video(tmp_path):
  """Distinct names, reported; an exact repeat of a row is skipped."""
  extra = [('spNO.1', 'j', 28, 31, 35, '12', 'I', 'surprise'),   # same onset as row 3, other ME
           ('spNO.1', 'j', 28, 30, 33, '24', 'VII', 'happy')]    # an exact repeat of row 3
  root = fake_releases.write_casme3(str(tmp_path), extra_rows=extra)
  cfg = casme3.Casme3(config='3class', data_dir=str(tmp_path / 'd')).builder_config
  clips, report = casme3.scan(root, cfg)
  got = {c.clip: c for c in clips if c.subject == 'spNO.1'}
  assert sorted(got) == ['b_166', 'j_28', 'j_28_2']
  assert (got['j_28'].offset, got['j_28_2'].offset, got['j_28_2'].label) == (33, 35, 'surprise')
  assert [i['action'] for i in _find(report, 'a second micro-expression with onset 28')] == [
      'named j_28_2']
  assert [i['action'] for i in _find(report, 'repeats row 3 exactly')] == [
      'skipped (duplicate row)']
  # And the whole preparation goes through (the duplicate used to abort it).
  data = _data_config('casme3', '3class', tmp_path / 'tfds', root)
  assert prepare.prepare(data)['num_clips'] == 5


def test_casme2_config_names_its_sheet(tmp_path):
  """'5class' is the 20190701 sheet; never silently the other one."""
  root = fake_releases.write_casme2(str(tmp_path))  # only CASME2-coding-20140508.xlsx
  with pytest.raises(discovery.DatasetLayoutError,
                     match='no coding sheet CASME2-coding-20190701.xlsx .* read by '
                           '--config.data.builder_config=5class_20140508'):
    casme2.scan(root, casme2.Casme2Config(name='5class'))
  fake_releases.write_casme2_sheet(os.path.join(root, 'CASME2-coding-20190701.xlsx'),
                              fake_releases.CASME2_ROWS[:3])
  assert len(casme2.scan(root, casme2.Casme2Config(name='5class'))[0]) == 3
  assert len(casme2.scan(root, OLD_SHEET)[0]) == 7
  descriptions = {c.name: c.description for c in casme2.Casme2.BUILDER_CONFIGS}
  assert '20190701' in descriptions['5class'] and '249' in descriptions['5class']


def test_record_checked_on_reuse_and_rebuild(tmp_path):
  """The prepared data's sources are recorded and checked."""
  manual = fake_releases.write_casme2(str(tmp_path / 'a'))
  cfg = _data_config('casme2', '5class_20140508', tmp_path / 'tfds', manual)
  first = prepare.prepare(cfg)
  record = first[prepare.STATUS_KEY]['record']
  sheet = os.path.join(manual, 'CASME2-coding-20140508.xlsx')
  assert record['manual_dir'] == os.path.realpath(manual)
  assert record['sheet'] == 'CASME2-coding-20140508.xlsx'
  assert record['sheet_sha256'] == discovery.file_sha256(sheet)
  assert record['frames'] == os.path.join('Cropped', 'Cropped')
  builder = prepare.builder_for(cfg)
  assert prepare.stored_record(builder) == record  # stored in metadata.json
  # Reuse without manual_dir: says plainly from which folder and sheet.
  text = prepare.format_report(prepare.prepare(_data_config('casme2', '5class_20140508',
                                                            tmp_path / 'tfds', '')))
  assert text.splitlines()[0].startswith(f'Reusing the prepared data in {builder.data_dir}')
  assert os.path.realpath(manual) in text.splitlines()[0]
  assert 'CASME2-coding-20140508.xlsx' in text.splitlines()[0]
  # Another manual_dir: refused, naming the key; nothing changes.
  other = fake_releases.write_casme2(str(tmp_path / 'b'), extra_rows=[
      (8, 'EP01_01', 5, 6, 8, 4, 'happiness', range(5, 9))])
  mtime = os.path.getmtime(builder.data_dir)
  with pytest.raises(prepare.PreparedDataError, match='differ in manual_dir: recorded') as e:
    prepare.prepare(_data_config('casme2', '5class_20140508', tmp_path / 'tfds', other))
  assert 'rebuild=True' in str(e.value) and '\n' not in str(e.value)
  assert os.path.getmtime(builder.data_dir) == mtime
  # A changed sheet in the recorded folder: refused, naming the sheet's hash.
  fake_releases.write_casme2_sheet(sheet, fake_releases.CASME2_ROWS[:4])
  with pytest.raises(prepare.PreparedDataError, match='sheet_sha256: CASME2-coding-20140508.xlsx is not the recorded file'):
    prepare.prepare(cfg)
  # A missing manual_dir: the error says what the data_dir holds.
  with pytest.raises(discovery.DatasetLayoutError,
                     match='does not exist.*already holds casme2 prepared from'):
    prepare.prepare(_data_config('casme2', '5class_20140508', tmp_path / 'tfds', tmp_path / 'gone'))
  # rebuild=True prepares it again from the new folder.
  cfg_b = _data_config('casme2', '5class_20140508', tmp_path / 'tfds', other)
  cfg_b.rebuild = True
  rebuilt = prepare.prepare(cfg_b)
  assert rebuilt[prepare.STATUS_KEY]['status'] == 'rebuilt' and rebuilt['num_clips'] == 8
  assert prepare.stored_record(prepare.builder_for(cfg_b))['manual_dir'] == os.path.realpath(other)
  assert len(prepare.builder_for(cfg_b).as_data_source(split='train')) == 8
  # A rebuild that fails leaves the previous data in place.
  fake_releases.corrupt(os.path.join(manual, 'Cropped', 'Cropped', 'sub01', 'EP02_01f', 'reg_img47.jpg'))
  cfg_a = _data_config('casme2', '5class_20140508', tmp_path / 'tfds', manual)
  cfg_a.rebuild = True
  with pytest.raises(Exception, match='reg_img47.jpg'):
    prepare.prepare(cfg_a)
  kept = prepare.builder_for(cfg_b)
  assert kept.is_prepared() and len(kept.as_data_source(split='train')) == 8
  assert prepare.stored_record(kept)['manual_dir'] == os.path.realpath(other)


def test_manual_dir_that_is_a_file(tmp_path):
  """A file given as manual_dir is called a file, not "does not exist"."""
  f = tmp_path / 'SAMM.zip'
  f.write_bytes(b'PK\x03\x04')
  with pytest.raises(discovery.DatasetLayoutError, match='is a file, not a folder'):
    prepare.prepare(_data_config('samm', '5class', tmp_path / 'tfds', f))
