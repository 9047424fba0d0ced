"""Long-video builders on fake releases in the real layouts: exact counts, every quirk reported."""

import collections
import os

import numpy as np
import pytest

from configs import casme2_longvideo as casme2_lv_config
from configs import samm_longvideo as samm_lv_config
from mpt_jax.spotting import dataset
from tests import longvideo_fixtures as lf
from tfds_builders import casme2_longvideo
from tfds_builders import prepare
from tfds_builders import samm_longvideo

RAWPIC = casme2_longvideo.Casme2LongConfig(name='rawpic')


def _issues(report, needle):
  return [i for i in report.issues if needle in i['problem']]


@pytest.fixture(scope='module')
def casme2_root(tmp_path_factory):
  return lf.write_casme2_longvideo(str(tmp_path_factory.mktemp('casme2_lv')))


@pytest.fixture(scope='module')
def samm_root(tmp_path_factory):
  return lf.write_samm_longvideo(str(tmp_path_factory.mktemp('samm_lv')))


def test_casme2_counts_and_quirks(casme2_root):
  videos, report = casme2_longvideo.scan(casme2_root, RAWPIC)
  exprs = [e for v in videos for e in v.expressions]
  assert collections.Counter(e.type for e in exprs) == {'mae': 300, 'me': 57}
  assert len({v.subject for v in videos}) == 22 and len(videos) == 46
  assert collections.Counter(e.emotion for e in exprs if e.type == 'me') == {
      'negative': 21, 'others': 19, 'surprise': 9, 'positive': 8}
  # 44 offsets 0: 43 set to the apex, the one whose apex is 0 too set to the onset.
  assert len(_issues(report, 'offset 0 (not annotated)')) == 43
  assert len(_issues(report, 'offset 0 and apex 0')) == 1
  # 3 apexes after the offset: the interval is kept, the apex goes to its midpoint.
  after = _issues(report, 'outside onset..offset')
  assert len(after) == 3 and all('midpoint' in i['action'] for i in after)
  by_name = {(v.subject, e.name): e for v in videos for e in v.expressions}
  rows = lf.casme2_rows()
  r = rows[120]  # onset o, apex o + 9, offset o + 3
  e = by_name[(lf.CASME2_SUBJECTS[r[0] - 1], r[1])]
  assert (e.onset, e.offset, e.apex) == (r[2], r[2] + 3, (2 * r[2] + 3) // 2)
  r = rows[61]   # offset 0 -> the apex
  e = by_name[(lf.CASME2_SUBJECTS[r[0] - 1], r[1])]
  assert (e.onset, e.apex, e.offset) == (r[2], r[3], r[3])
  # img998..img1003: img1000 outgrows the 3-digit padding and still sorts after img999.
  v = next(v for v in videos if v.video.startswith('15_0508'))
  assert v.frame_numbers == list(range(998, 1004))
  assert [os.path.basename(p) for p in v.frames][1:3] == ['img999.jpg', 'img1000.jpg']
  assert [(e.onset, e.apex, e.offset, e.type) for e in v.expressions] == [(998, 1000, 1003, 'me')]
  # a numeric video code (502) finds its 4-digit folder (19_0502...)
  assert any(v.video.startswith('19_0502') and v.expressions for v in videos)
  assert len(_issues(report, 'no expression annotated')) == 1
  assert all(v.fps == 30.0 and v.stride == 1 for v in videos)


def test_samm_counts_and_quirks(samm_root):
  videos, report = samm_longvideo.scan(samm_root)
  exprs = [e for v in videos for e in v.expressions]
  assert collections.Counter(e.type for e in exprs) == {'mae': 343, 'me': 159}
  assert len({v.subject for v in videos}) == 30 and len(videos) == 60
  assert report.source['sheet_version'] == 'V2'
  fractional = {i['where'] for i in _issues(report, 'fractional')}
  assert len(fractional) == 177
  assert len(_issues(report, 'onset 0')) == 10
  assert len(_issues(report, 'apex -1')) == 6
  rows = lf.samm_rows()
  by_name = {e.name: e for e in exprs}
  r = rows[159]  # onset x.4 -> x
  assert by_name[r[1]].onset == int(r[3])
  r = rows[162]  # onset x.6 -> x + 1
  assert by_name[r[1]].onset == int(r[3]) + 1
  r = rows[400]  # onset 0 -> 1
  assert by_name[r[1]].onset == 1
  r = rows[420]  # apex -1 -> midpoint
  e = by_name[r[1]]
  assert e.apex == (e.onset + e.offset) // 2
  # emotions joined from the short-clip sheet for 150 of the 159 MEs, coarse classes
  me = [e for e in exprs if e.type == 'me']
  assert sum(1 for e in me if e.emotion) == 150
  assert len(_issues(report, 'not in the short-clip sheet')) == 9
  assert {e.emotion for e in me if e.emotion} == {'negative', 'positive', 'surprise', 'others'}
  assert all(e.emotion == '' for e in exprs if e.type == 'mae')
  # 200 fps: every 7th frame stored; the 5-digit video too
  v = next(v for v in videos if v.video == '037_2')
  assert v.stride == 7 and v.frame_numbers == [1, 8, 15, 22, 29]
  assert os.path.basename(v.frames[1]) == '037_2_00008.jpg'


def test_samm_without_the_short_clip_sheet(tmp_path):
  root = lf.write_samm_longvideo(str(tmp_path), short_sheet=False)
  videos, report = samm_longvideo.scan(root)
  assert sum(len(v.expressions) for v in videos) == 502
  assert all(e.emotion == '' for v in videos for e in v.expressions)
  assert len(_issues(report, 'no short-clip sheet')) == 1


def test_missing_workbook_is_one_clear_error(tmp_path):
  lf.write_casme2_longvideo(str(tmp_path))
  os.remove(os.path.join(str(tmp_path), 'CASME_sq', 'CAS(ME)^2code_final.xlsx'))
  with pytest.raises(casme2_longvideo.discovery.DatasetLayoutError, match='code_final'):
    casme2_longvideo.scan(os.path.join(str(tmp_path), 'CASME_sq'), RAWPIC)


def _prepare(config_module, root, data_dir):
  config = config_module.get_config()
  config.data.manual_dir = root
  config.data.data_dir = data_dir
  config.data.prepare_workers = 1
  return config, prepare.prepare(config.data)


def test_casme2_prepares_one_example_per_video(casme2_root, tmp_path):
  config, report = _prepare(casme2_lv_config, casme2_root, str(tmp_path))
  assert report['per_type'] == {'mae': 300, 'me': 57} and report['num_videos'] == 46
  text = prepare.format_report(report)
  assert '46 videos, 22 subjects' in text and '300 MaE + 57 ME' in text
  assert 'offset 0 (not annotated) -> offset set to the apex' in text
  videos = list(dataset.iter_videos(config))
  assert len(videos) == 46
  v = next(v for v in videos if v.video.startswith('15_0508'))
  assert v.frames.shape == (6, 128, 128) and v.frames.dtype == np.uint8
  assert list(v.frame_numbers) == list(range(998, 1004))
  assert [(e.onset, e.apex, e.offset, e.type, e.emotion) for e in v.intervals] == [
      (998, 1000, 1003, 'me', 'negative')]
  assert v.fps == 30.0 and v.stride == 1 and v.subject == 's15'
  assert sum(len(v.intervals) for v in videos) == 357
  align = report['alignment']['counts']
  assert sum(align.values()) == 46
  # prepared again with the same sources: reused
  _, again = _prepare(casme2_lv_config, casme2_root, str(tmp_path))
  assert again[prepare.STATUS_KEY]['status'] == 'reused'


def test_samm_prepares_at_the_working_rate(samm_root, tmp_path):
  config, report = _prepare(samm_lv_config, samm_root, str(tmp_path))
  assert report['per_type'] == {'mae': 343, 'me': 159} and report['num_videos'] == 60
  assert report['num_frames_stored'] == 60 * 5
  v = next(dataset.iter_videos(config, subjects=['006']))
  assert list(v.frame_numbers) == [1, 8, 15, 22, 29] and v.stride == 7 and v.fps == 200.0
  assert v.frames.shape == (5, 128, 128)


def test_intervals_past_the_video_are_clipped_or_skipped():
  from tfds_builders import annotations, longvideo  # pylint: disable=g-import-not-at-top
  report = annotations.Report('x')
  video = longvideo.Video('d', 's', 'v', 30.0, [], list(range(1, 101)), 1)
  longvideo.add_expression(report, 'r1', video, longvideo.Expression(90, 99, 110, 'mae'))
  got, = video.expressions
  assert (got.onset, got.apex, got.offset) == (90, 99, 100)
  longvideo.add_expression(report, 'r2', video, longvideo.Expression(120, 125, 130, 'me'))
  assert len(video.expressions) == 1
  # A strided video (SAMM-LV: every 7th frame stored) covers its last stored frame's 7 frames.
  strided = longvideo.Video('d', 's', 'v', 200.0, [], list(range(1, 701, 7)), 7)
  longvideo.add_expression(report, 'r3', strided, longvideo.Expression(690, 695, 700, 'me'))
  assert [(e.onset, e.offset) for e in strided.expressions] == [(690, 700)]
  assert [i['action'] for i in report.issues] == ['clipped to 90..100', 'skipped']


def test_casme3_counts_blinks_and_frames_by_name(tmp_path):
  from tfds_builders import casme3_longvideo  # pylint: disable=g-import-not-at-top
  root = lf.write_casme3_longvideo(str(tmp_path))
  videos, report = casme3_longvideo.scan(root)
  exprs = [e for v in videos for e in v.expressions]
  assert collections.Counter(e.type for e in exprs) == {'mae': 3346, 'me': 860}
  assert len(videos) == 20 and {v.subject for v in videos} == set(lf.CASME3_SUBJECTS)
  assert sum(len(v.negatives) for v in videos) == 841
  v = next(v for v in videos if v.video == 'J')
  assert v.frame_numbers == lf.CASME3_FRAMES  # indexed by name: 9.., 20 missing
  assert len(_issues(report, 'the first frame is 9')) == 20
  assert len(_issues(report, '1 missing frame(s) in 9..32: 20')) == 20
  me = [e for e in exprs if e.type == 'me']
  assert sum(1 for e in me if not e.emotion) == 1
  # 859 labelled MEs cycle through the 7 emotions: 4 of them negative
  detail = collections.Counter(e.emotion_detail for e in me if e.emotion)
  assert sum(detail.values()) == 859 and set(detail) == set(lf.CASME3_EMOTIONS)
  coarse = collections.Counter(e.emotion for e in me if e.emotion)
  assert coarse['negative'] == sum(detail[k] for k in ('disgust', 'fear', 'anger', 'sad'))
  assert coarse['positive'] == detail['happy'] and coarse['surprise'] == detail['surprise']
  assert len(_issues(report, 'outside onset..offset')) == 1


@pytest.mark.parametrize('name', ['casme2_longvideo', 'samm_longvideo', 'casme3_longvideo'])
def test_configs_name_their_builder_and_preset(name, tmp_path):
  import importlib  # pylint: disable=g-import-not-at-top
  from mpt_jax.spotting import params  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.{name}').get_config()
  config.data.data_dir = str(tmp_path)
  assert prepare.builder_for(config.data).name == name
  preset = params.PRESETS[name]
  assert (config.spot.k_me, config.spot.k_mae, config.spot.p, config.spot.me_min,
          config.spot.me_max) == (preset.k_me, preset.k_mae, preset.p, preset.me_min,
                                  preset.me_max)
  with pytest.raises(ValueError, match='Unknown config argument'):
    importlib.import_module(f'configs.{name}').get_config('smoke')


def test_duplicate_frame_numbers_keep_the_first_file():
  from tfds_builders import annotations  # pylint: disable=g-import-not-at-top
  report = annotations.Report('x')
  frames = [(1, 'a/img1.jpg'), (1, 'a/img001.jpg'), (2, 'a/img2.jpg')]
  assert annotations.first_of_each_number(report, 'v', frames) == [(1, 'a/img1.jpg'),
                                                                    (2, 'a/img2.jpg')]
  assert [i['action'] for i in report.issues] == ['kept the first file of each number']
  assert annotations.first_of_each_number(report, 'v', frames[1:]) == frames[1:]
  assert len(report.issues) == 1


def test_unreadable_frame_of_a_long_video_is_refused_or_skipped_and_reported(tmp_path):
  base, frames, _ = lf.write_casme2_planted(str(tmp_path / 'manual'), n=100)
  folder = os.path.join(base, 'rawpic', 's15', '15_0101disgustingteeth')
  bad = os.path.join(folder, 'img005.jpg')
  with open(bad, 'wb') as f:
    f.write(b'not a jpeg')
  # Refused by default, in one line naming the file.
  with pytest.raises(Exception, match='img005.jpg') as e:
    _prepare(casme2_lv_config, base, str(tmp_path / 'refused'))
  assert 'skip_bad_frames' in str(e.value) and '\n' not in str(e.value)
  # Skipped on request: the video loses that frame only, and the report says so.
  config = casme2_lv_config.get_config()
  config.data.manual_dir, config.data.data_dir = base, str(tmp_path / 'skipped')
  config.data.prepare_workers, config.data.skip_bad_frames = 1, True
  report = prepare.prepare(config.data)
  assert any('unreadable frame' in i['problem'] and 'img005.jpg' in i['problem']
             for i in report['issues']), report['issues']
  (v,) = list(dataset.iter_videos(config))
  assert list(v.frame_numbers) == [n for n in range(1, len(frames) + 1) if n != 5]
  assert v.frames.shape[0] == len(frames) - 1
