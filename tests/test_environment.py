"""environment.jsonl: what differs between two runs' last starts, read back from real files."""

import json
import os

from xray_jax import environment


def _write(folder, *records):
  folder.mkdir()
  for r in records:
    environment.append(str(folder), r)
  return str(folder)


def test_differences_name_each_changed_leaf_and_ignore_the_time():
  a = {"time": "t0", "versions": {"jax": "0.10.2", "numpy": "2.4"}, "cpu": {"caches": {"L2_unified": "2048K"}}}
  b = {"time": "t1", "versions": {"jax": "0.10.2", "numpy": "2.5"}, "cpu": {"caches": {"L2_unified": "1024K"}},
       "env": {"XLA_FLAGS": "--x"}}
  assert environment.differences(a, b) == [("cpu.caches.L2_unified", "2048K", "1024K"), ("env", None, {"XLA_FLAGS": "--x"}),
                                           ("versions.numpy", "2.4", "2.5")]
  assert environment.differences(a, {**a, "time": "later"}) == []


def test_command_line_compares_the_last_start_of_two_workdirs(tmp_path, capsys):
  old = {"time": "t0", "cpu": {"isa": ["avx2"]}}
  new = {"time": "t1", "cpu": {"isa": ["avx2", "avx512f"]}}
  a = _write(tmp_path / "a", old, new)  # resumed on another machine: the last line counts
  b = _write(tmp_path / "b", old)
  assert environment.main(["environment", a, b]) == 0
  assert capsys.readouterr().out == "cpu.isa: ['avx2', 'avx512f']  |  ['avx2']\n"
  assert environment.main(["environment", a, a]) == 0
  assert "Same software" in capsys.readouterr().out
  assert environment.main(["environment", a, str(tmp_path / "none")]) == 1
  assert "environment.jsonl: cannot read it" in capsys.readouterr().err
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / environment.FILE).write_text("")
  assert environment.main(["environment", a, str(tmp_path / "empty")]) == 1
  assert "is empty" in capsys.readouterr().err
  assert [json.loads(l) for l in open(tmp_path / "a" / environment.FILE)] == [old, new]


def test_describe_reads_this_machine():
  record = environment.describe()
  assert record["cpu"]["logical_cpus"] >= 1 and "jax" in record["versions"] and "data" not in record
  assert json.loads(json.dumps(record)) == record  # what append writes reads back the same


def _write_records(folder, examples):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  folder.mkdir()
  with tf.io.TFRecordWriter(str(folder / "set-train.tfrecord-00000-of-00001")) as w:
    for raw in examples:
      w.write(raw)
  return str(folder)


def test_data_digest_is_of_the_records_not_of_the_map_order_tfds_happened_to_write(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def example(order, label=1):
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x89PNG..."])),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
    # Serialised Examples concatenate to their merge, so this writes the feature map in `order`,
    # as two preparations of the same images by TFDS can.
    return b"".join(tf.train.Example(features=tf.train.Features(feature={k: feature[k]})).SerializeToString()
                    for k in order)

  a = _write_records(tmp_path / "a", [example(("image", "label")), example(("label", "image"), 0)])
  b = _write_records(tmp_path / "b", [example(("label", "image")), example(("image", "label"), 0)])
  relabelled = _write_records(tmp_path / "c", [example(("image", "label")), example(("label", "image"), 1)])
  name = "set-train.tfrecord-00000-of-00001"
  assert open(f"{a}/{name}", "rb").read() != open(f"{b}/{name}", "rb").read()  # other bytes ...
  digest = environment.data_digest(a)
  assert digest["records_sha256"] == environment.data_digest(b)["records_sha256"]  # ... the same records
  assert digest["records_sha256"] != environment.data_digest(relabelled)["records_sha256"]
  assert digest["bytes"] == {name: os.path.getsize(f"{a}/{name}")}
