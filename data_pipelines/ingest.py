r"""Raw clinical files -> ArrayRecord shards of 224x224 uint8 records, as an Apache Beam pipeline.

  python -m data_pipelines.ingest --input=/data/raw --output=/data/shards --salt=$SALT \
      [--modality=auto|CT|MR|PT|XR|US] [--size=224] [--files_per_shard=0] [--verbose] \
      [--error_paths=PRIVATE.csv] [Beam options]

The machinery (plan, shards, finish, errors, privacy) is `ShardedIngest`'s, which
data_pipelines/volume_ingest.py shares for volumes; this module's `IngestConfig` makes 2-D
frames. Three steps, each safe to repeat:
1. Plan (on the launcher): a sorted, streaming walk of --input writes the relative paths,
   encrypted with a key made from the salt, into `_plan/shard-NNNNN.txt`, `files_per_shard` to
   a file (by default sized so that every core gets several shards), so no process ever holds
   the whole file list. A rerun reuses the plan, so shard k always holds the same files in the
   same order.
2. Shards (one Beam element each, on any worker): read, window and letterbox every frame of the
   shard's files (data_pipelines.readers), write `shard-NNNNN.array_record` and its index rows,
   then `shard-NNNNN.json` (counts, pixel sums, unreadable files) last, as the completion mark.
   A shard whose mark exists is skipped: an interrupted run resumes where it stopped.
3. Finish (on the launcher): `index.csv` (one row per record, global order), `errors.csv`
   (per file that is not an image, or not a readable one: its number in the sorted walk, its
   salted hash, the reason) and `dataset.json` (shards, counts per modality, pixel mean/std)
   from the per-shard files; then the plan is deleted. A rerun walks the same files into the
   same plan and finds its shards marked done.

Hostile inputs: any file name the filesystem allows is read (bytes that are not UTF-8, line
breaks); a file is read only if it is a regular file of bounded size whose header promises a
bounded number of pixels (readers.read_frames), and values that are not finite are an error;
whatever fails for one file becomes its row of errors.csv and the ingest goes on.

Runners: by default Beam's FnApiRunner with one thread per core. For millions of files
pass e.g. `--runner=FlinkRunner --flink_master=host:8081 --environment_type=PROCESS` or
`--runner=DataflowRunner --project=... --region=... --temp_location=gs://...
--sdk_container_image=...` (an image with `pip install vismae_jax[ingest]`): the workers must
see --input and --output at the same paths (a shared filesystem, NFS or a GCS FUSE mount),
because shards are written with local file APIs.

Privacy: patient, study and series identifiers and source paths are stored only as salted
SHA-256 prefixes; the salt (--salt or $VISMAE_INGEST_SALT) is never written. No other DICOM
attribute is read into a record; no output, plan or log names a file (errors.csv's reasons
have the file's name cut out). `--error_paths=FILE`, outside --output, is the one opt-in place
where the names of the files in errors.csv are written, for the user to keep private.
"""
import abc
import base64
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import threading

import numpy as np
import tqdm
from absl import app, flags
from array_record.python import array_record_module

from data_pipelines import DatasetError, console, disk, locks, readers, records, shards
from data_pipelines import signals

PLAN_DIR = "_plan"
ERRORS = "errors.csv"
ERROR_FIELDS = ("file", "source_hash", "reason")
# What a shard's completion mark (shard-NNNNN.json) holds; finish() sums them.
SUMMARY_FIELDS = {"shard", "records", "files", "counts", "shapes", "pixel_sum", "pixel_sq_sum",
                  "pixels", "errors"}
SKIPPED_SUFFIXES = (".md", ".txt", ".csv", ".json", ".xml", ".html", ".pdf")
SHARDS_PER_WORKER = 4
MAX_FILES_PER_SHARD = 1024


@dataclasses.dataclass(frozen=True)
class ShardedIngest(abc.ABC):
  """What every ingest into shards shares: the plan, the shards with their completion marks,
  the finish, the report and the privacy guarantees. A subclass says what one planned item is
  (`items`), which records it makes (`convert`) and what the outputs depend on (`recorded`):
  IngestConfig for 2-D frames, data_pipelines.volume_ingest for volumes."""
  input: str
  output: str
  salt: str
  files_per_shard: int = 0  # planned items per shard; 0: auto_files_per_shard
  error_paths: str = ""  # where to write errors.csv's rows with the file names (private)

  @abc.abstractmethod
  def recorded(self) -> dict:
    """What the outputs depend on, minus the salt: stored with the plan and the manifest."""

  def items(self, rel_paths):
    """The planned items, each a list of relative paths converted together: here every file
    on its own. Items never span shards, so files that make one record stay together."""
    for rel in rel_paths:
      yield [rel]

  @abc.abstractmethod
  def convert(self, position: int, item: list[str], errors: list):
    """Yields the records (with .encode(), .values(), .modality and the hashes) of the item
    planned at `position`; appends an error_row to `errors` per file that fails."""

  def estimated_bytes(self, num_files: int) -> int:
    """At least what the shards of `num_files` files take (0: no estimate)."""
    del num_files
    return 0

  def describe(self) -> dict:
    """Fields of dataset.json that only this kind of ingest has."""
    return {}

  def hashed(self, value: str) -> str:
    return records.salted_hash(value, self.salt)


@dataclasses.dataclass(frozen=True)
class IngestConfig(ShardedIngest):
  size: int = 224
  read: readers.ReadOptions = readers.ReadOptions()

  def estimated_bytes(self, num_files: int) -> int:
    return num_files * self.size * self.size  # a uint8 frame each at least, before compression

  def recorded(self) -> dict:
    return json.loads(json.dumps({"size": self.size, "files_per_shard": self.files_per_shard,
                                  "read": dataclasses.asdict(self.read)}))

  def convert(self, position: int, item: list[str], errors: list):
    """Every frame of one file, letterboxed."""
    rel, = item
    try:
      frames = readers.read_frames(os.path.join(self.input, rel), rel, self.read)
    except Exception as e:  # one file never stops the ingest: it becomes a row of the report
      errors.append(error_row(self, position, rel, str(e) or type(e).__name__))
      return
    for k, frame in enumerate(frames):
      yield records.ImageRecord(
          image=readers.letterbox(frame.image, self.size), modality=frame.modality,
          patient_key=self.hashed(frame.patient_id), study_hash=self.hashed(frame.study_uid),
          series_hash=self.hashed(frame.series_uid), source_hash=self.hashed(f"{rel}#{k}"),
          orig_size=frame.image.shape)

  def describe(self) -> dict:
    return {"image_shape": [self.size, self.size]}


def walk_files(root: str, skip_dir: str = "", unreadable: list | None = None):
  """Relative paths under root in sorted order, streamed (one directory listing at a time).

  Any name the filesystem allows comes through (bytes that are not UTF-8 as surrogate
  escapes, line breaks and all). Links to folders are not followed but listed, so that they
  are reported like any other input that is not an image; folders that cannot be listed are
  appended to `unreadable` as (relative path, reason).
  """
  skip_dir = os.path.realpath(skip_dir) if skip_dir else ""

  def failed(error: OSError):
    if unreadable is not None:
      unreadable.append((os.path.relpath(error.filename, root),
                         f"a folder that cannot be listed ({type(error).__name__})"))
  for dirpath, dirnames, filenames in os.walk(root, onerror=failed):
    links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
    dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in links
                         and os.path.realpath(os.path.join(dirpath, d)) != skip_dir)
    for name in sorted(filenames + links):
      if not name.startswith(".") and not name.lower().endswith(SKIPPED_SUFFIXES):
        yield os.path.relpath(os.path.join(dirpath, name), root)


def _plan_cipher(config: ShardedIngest):
  """Plan files name the source files, so they are encrypted with a key made from the salt:
  what a killed run leaves behind names no patient, and the workers, which know the salt, can
  still read them."""
  from cryptography import fernet  # the [ingest] extra
  digest = hashlib.sha256(b"vismae-ingest-plan\x00" + config.salt.encode()).digest()
  return fernet.Fernet(base64.urlsafe_b64encode(digest))


def error_row(config: ShardedIngest, position: int | None, rel: str, reason: str) -> dict:
  """An errors.csv row: where the file is in the sorted walk and its salted hash, never its
  name (names can identify patients); --error_paths maps them back, privately."""
  return {"file": position or "", "source_hash": records.salted_hash(rel, config.salt),
          "reason": readers.scrubbed(reason, rel, os.path.join(config.input, rel))}


def shard_name(shard: int, suffix: str) -> str:
  return f"shard-{shard:05d}{suffix}"


def auto_files_per_shard(num_files: int, workers: int) -> int:
  """Shards small enough that every worker gets several (a small set still uses every core),
  at most MAX_FILES_PER_SHARD (millions of files stay a manageable number of shards)."""
  return max(1, min(MAX_FILES_PER_SHARD, -(-num_files // (SHARDS_PER_WORKER * workers))))


def _files_per_shard(config: ShardedIngest) -> int:
  """The configured count, or the one an earlier run of this output chose, or a new choice."""
  if config.files_per_shard:
    return config.files_per_shard
  manifest = os.path.join(config.output, shards.MANIFEST)
  if os.path.exists(manifest):
    with open(manifest) as f:
      return json.load(f)["files_per_shard"]
  num_items = sum(1 for _ in config.items(walk_files(config.input, skip_dir=config.output)))
  return auto_files_per_shard(num_items, os.cpu_count() or 1)


def plan(config: ShardedIngest) -> int:
  """Writes (or reuses) the item lists of every shard; returns the number of shards."""
  plan_dir = os.path.join(config.output, PLAN_DIR)
  plan_file = os.path.join(plan_dir, "plan.json")
  for earlier in (plan_file, os.path.join(config.output, shards.MANIFEST)):
    if os.path.exists(earlier):
      with open(earlier) as f:
        saved = json.load(f)["config"]
      if saved != config.recorded():
        raise DatasetError(f"{config.output} was written with {saved}, not "
                         f"{config.recorded()}: use a new --output or the same options")
  if os.path.exists(plan_file):  # an interrupted run: keep its plan
    with open(plan_file) as f:
      return json.load(f)["num_shards"]
  tmp = plan_dir + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  per_shard = _files_per_shard(config)
  cipher = _plan_cipher(config)
  num_items = num_files = num_shards = 0
  out, unreadable = None, []
  for item in config.items(walk_files(config.input, skip_dir=config.output,
                                      unreadable=unreadable)):
    if num_items % per_shard == 0:
      if out:
        out.close()
      out = open(os.path.join(tmp, shard_name(num_shards, ".txt")), "w")
      num_shards += 1
    # A line per item: its paths joined by NUL, the one byte no path holds.
    out.write(cipher.encrypt(b"\0".join(map(os.fsencode, item))).decode("ascii") + "\n")
    num_items += 1
    num_files += len(item)
  if out:
    out.close()
  if not num_files:
    raise DatasetError(f"--input={config.input}: no files found")
  with open(os.path.join(tmp, "plan.json"), "w") as f:
    json.dump({"num_shards": num_shards, "num_files": num_files, "files_per_shard": per_shard,
               "walk_errors": [error_row(config, None, rel, reason)
                               for rel, reason in unreadable],
               "config": config.recorded()}, f)
  os.replace(tmp, plan_dir)
  return num_shards


def _write_atomically(path: str, write):
  with open(path + ".tmp", "w", newline="") as f:
    write(f)
  os.replace(path + ".tmp", path)


def _planned_items(config: ShardedIngest, shard: int) -> list[list[str]]:
  cipher = _plan_cipher(config)
  with open(os.path.join(config.output, PLAN_DIR, shard_name(shard, ".txt"))) as f:
    return [[os.fsdecode(p) for p in cipher.decrypt(line.encode()).split(b"\0")]
            for line in f.read().split()]


# Set by SIGTERM or SIGINT during an ingest (signals.StopRequests): the shards in flight finish,
# the others are left to the rerun. A module global, which Beam's worker threads see.
STOP = threading.Event()


def write_shard(shard: int, config: ShardedIngest) -> dict | None:
  """Converts one planned shard; returns its summary (None: not started, on a stop request).
  Skips shards finished earlier, unless an older version wrote them (their summary lacks a
  field this one keeps): those are written anew."""
  if STOP.is_set():
    return None
  out = lambda suffix: os.path.join(config.output, shard_name(shard, suffix))
  if os.path.exists(out(".json")):
    with open(out(".json")) as f:
      summary = json.load(f)
    if SUMMARY_FIELDS <= summary.keys():
      return summary
  items = _planned_items(config, shard)
  first = shard * _planned(config)["files_per_shard"] + 1  # this shard's first item, 1-based
  # One record per chunk for cheap random access; snappy reads about twice as fast as the
  # default zstd on uint8 images for a similar size (benchmarks/data_throughput.py).
  writer = array_record_module.ArrayRecordWriter(out(".array_record.tmp"),
                                                 "group_size:1,snappy")
  rows, errors, counts, shapes = [], [], {}, {}
  pixel_sum = pixel_sq_sum = 0.0
  pixels = 0
  for position, item in enumerate(items, start=first):
    for record in config.convert(position, item, errors):
      writer.write(record.encode())
      rows.append({"offset": len(rows), "modality": record.modality,
                   "patient_key": record.patient_key, "study_hash": record.study_hash,
                   "series_hash": record.series_hash, "source_hash": record.source_hash})
      counts[record.modality] = counts.get(record.modality, 0) + 1
      values = record.values()
      shape = "x".join(map(str, values.shape))
      shapes[shape] = shapes.get(shape, 0) + 1
      pixel_sum += float(values.sum())
      pixel_sq_sum += float((values ** 2).sum())
      pixels += values.size
  writer.close()
  if rows:
    os.replace(out(".array_record.tmp"), out(".array_record"))
  else:
    os.remove(out(".array_record.tmp"))

  def write_rows(f):
    w = csv.DictWriter(f, shards.INDEX_FIELDS[1:])  # the shard is implied by the file name
    w.writeheader()
    w.writerows(rows)
  _write_atomically(out(".index.csv"), write_rows)
  summary = {"shard": shard, "records": len(rows), "files": sum(map(len, items)),
             "counts": counts, "shapes": shapes, "pixel_sum": pixel_sum,
             "pixel_sq_sum": pixel_sq_sum, "pixels": pixels, "errors": errors}
  _write_atomically(out(".json"), lambda f: json.dump(summary, f))
  return summary


def _planned(config: ShardedIngest) -> dict:
  with open(os.path.join(config.output, PLAN_DIR, "plan.json")) as f:
    return json.load(f)


def _write_error_paths(config: ShardedIngest, errors: list[dict]):
  """The private map from errors.csv's rows back to file names (--error_paths; the files of an
  item of several, one per line)."""
  per_shard = _planned(config)["files_per_shard"]
  wanted = {int(e["file"]) for e in errors if e["file"]}
  names = {}
  for name in sorted(os.listdir(os.path.join(config.output, PLAN_DIR))):
    if name.endswith(".txt"):
      shard = int(name[len("shard-"):-len(".txt")])
      for position, item in enumerate(_planned_items(config, shard), start=shard * per_shard + 1):
        if position in wanted:
          names[position] = "\n".join(item)
  with open(config.error_paths, "w", newline="", encoding="utf-8",
            errors="surrogateescape") as f:
    w = csv.writer(f)
    w.writerow(["file", "source_hash", "path"])
    w.writerows([e["file"], e["source_hash"], names.get(int(e["file"] or 0), "")]
                for e in errors)


def finish(config: ShardedIngest, num_shards: int) -> dict:
  """index.csv, errors.csv and dataset.json from the per-shard outputs; returns the manifest."""
  summaries = [write_shard(k, config) for k in range(num_shards)]  # all done: reads the marks
  names = [shard_name(s["shard"], ".array_record") for s in summaries if s["records"]]
  with open(os.path.join(config.output, shards.INDEX), "w", newline="") as f:
    w = csv.DictWriter(f, shards.INDEX_FIELDS)
    w.writeheader()
    for s in summaries:
      with open(os.path.join(config.output, shard_name(s["shard"], ".index.csv")),
                newline="") as part:
        for row in csv.DictReader(part):
          w.writerow({"shard": shard_name(s["shard"], ".array_record"), **row})
  errors = _planned(config)["walk_errors"] + [e for s in summaries for e in s["errors"]]
  with open(os.path.join(config.output, ERRORS), "w", newline="") as f:
    w = csv.DictWriter(f, ERROR_FIELDS)
    w.writeheader()
    w.writerows(errors)
  if config.error_paths:
    _write_error_paths(config, errors)
  num_records = sum(s["records"] for s in summaries)
  if not num_records:
    raise DatasetError(f"--input={config.input}: none of the files could be read; see "
                     f"{os.path.join(config.output, ERRORS)}")
  counts, shapes = {}, {}
  for s in summaries:
    for total, part in ((counts, s["counts"]), (shapes, s["shapes"])):
      for key, n in part.items():
        total[key] = total.get(key, 0) + n
  n = sum(s["pixels"] for s in summaries)
  mean = sum(s["pixel_sum"] for s in summaries) / n
  var = sum(s["pixel_sq_sum"] for s in summaries) / n - mean ** 2
  manifest = {"shards": names, "num_records": num_records, "counts": dict(sorted(counts.items())),
              "num_files": sum(s["files"] for s in summaries), "num_errors": len(errors),
              "pixel_mean": mean, "pixel_std": float(np.sqrt(max(var, 0.0))),
              "shapes": dict(sorted(shapes.items())), **config.describe(),
              "config": config.recorded()}
  manifest["files_per_shard"] = _planned(config)["files_per_shard"]
  with open(os.path.join(config.output, shards.MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)
  shutil.rmtree(os.path.join(config.output, PLAN_DIR))
  return manifest


def finished_shards(config: ShardedIngest, num_shards: int) -> int:
  """How many shards have their completion mark (the last file a shard writes)."""
  return sum(os.path.exists(os.path.join(config.output, shard_name(k, ".json")))
             for k in range(num_shards))


def _watch_progress(config: ShardedIngest, num_shards: int, stop: threading.Event):
  """A progress bar (rate, ETA) fed by the shards' completion marks, whatever the runner."""
  done = lambda: finished_shards(config, num_shards)
  with tqdm.tqdm(total=num_shards, initial=done(), unit="shard", desc="ingest",
                 disable=None) as bar:  # None: on a terminal only
    while not stop.wait(2.0):
      bar.update(done() - bar.n)
    bar.update(done() - bar.n)


def run_beam(config: ShardedIngest, num_shards: int, beam_args: list[str]):
  import apache_beam as beam  # optional: the [ingest] extra
  from apache_beam.options.pipeline_options import PipelineOptions

  if not any(a.startswith("--runner") for a in beam_args):
    # Beam's FnApiRunner with a thread per core: as fast as worker processes on this work
    # (decoding and writing run outside the GIL), and unlike the DirectRunner it never tries
    # to download the Prism runner.
    beam_args = ["--runner=FnApiRunner", "--direct_running_mode=multi_threading",
                 f"--direct_num_workers={os.cpu_count()}"] + beam_args
  with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
    _ = (pipeline
         | "Shards" >> beam.Create(range(num_shards))
         | "Spread" >> beam.Reshuffle()
         | "Write" >> beam.Map(write_shard, config))


def ingest(config: ShardedIngest, beam_args: list[str] | None = None) -> dict:
  """Plan, shards, finish, with the output folder held (locks.py: one ingest writes it at a
  time). beam_args None: shards in this process (small inputs, the sample)."""
  with locks.hold(config.output, "ingest"), signals.StopRequests(
      "after the shards in flight", STOP) as stop:
    num_shards = plan(config)
    disk.check_free(config.output, config.estimated_bytes(_planned(config)["num_files"]) * (
        1 - finished_shards(config, num_shards) / num_shards), "the shards still to write",
                    "use another --output")
    done_watching = threading.Event()
    watcher = threading.Thread(target=_watch_progress, args=(config, num_shards, done_watching))
    watcher.start()
    try:
      if beam_args is None:
        for k in range(num_shards):
          write_shard(k, config)
      else:
        run_beam(config, num_shards, beam_args)
    except Exception as e:
      if not disk.is_out_of_space(e):
        raise
      raise disk.OutOfSpace(
          f"{config.output}: out of disk space while writing shards; kept: the "
          f"{finished_shards(config, num_shards)} of "
          f"{num_shards} shards that finished ({disk.human(disk.free_bytes(config.output))} "
          "free now). Free space there and rerun the same command to resume") from None
    finally:
      done_watching.set()
      watcher.join()
    if stop.received:
      raise signals.Stopped(f"stopped on {stop.received} with "
                            f"{finished_shards(config, num_shards)} of {num_shards} shards "
                            f"finished in {config.output}; the same command resumes")
    return finish(config, num_shards)


def parse_window(text: str) -> tuple:
  """MODALITY:CENTER:WIDTH -> (modality, center, width)."""
  modality, center, width = text.split(":")
  if modality not in records.MODALITIES:
    raise ValueError(f"unknown modality {modality!r}")
  return modality, float(center), float(width)


def define_common_flags(inputs: str):
  """The flags of every ingest's command line (--input holds `inputs`), defined only when the
  module runs as the program (a library import must not add them to another program's)."""
  flags.DEFINE_string("input", None, f"folder of {inputs}", required=True)
  flags.DEFINE_string("output", None, "folder for the shards, index and manifest",
                      required=True)
  flags.DEFINE_string("salt", os.environ.get("VISMAE_INGEST_SALT", ""),
                      "secret for the de-identified keys (default $VISMAE_INGEST_SALT); never "
                      "stored, keep it to make reruns and later ingests consistent")
  flags.DEFINE_bool("verbose", False, "also show Apache Beam's INFO and WARNING lines")
  flags.register_validator(
      "salt", bool, "--salt (or $VISMAE_INGEST_SALT) is required: it keys the de-identified "
      "patient hashes, and a fixed salt keeps them stable across runs")
  flags.register_validator("input", lambda path: path is None or os.path.isdir(path),
                           "--input must be a folder")


def define_flags():
  """This command line's flags (see define_common_flags)."""
  define_common_flags("DICOM, PNG/JPEG and NIfTI files")
  flags.DEFINE_enum("modality", "auto", ("auto",) + records.MODALITIES,
                    "auto: DICOM Modality attribute, else a folder named CT/MR/PET/XR/US")
  flags.DEFINE_integer("size", 224, "stored side (letterboxed square)", lower_bound=16)
  flags.DEFINE_integer("files_per_shard", 0, "files per shard, one Beam element each (0: "
                       f"{SHARDS_PER_WORKER} shards per core, at most {MAX_FILES_PER_SHARD} "
                       "files each)", lower_bound=0)
  flags.DEFINE_multi_string("fallback_window", [],
                            "MODALITY:CENTER:WIDTH for images without a VOI window (default "
                            "CT:40:400; others use the 0.5-99.5 percentile range)")
  flags.DEFINE_string("error_paths", "", "also write errors.csv's rows with the files' names to "
                      "this file, outside --output: names can identify patients, so keep it "
                      "private")
  flags.DEFINE_integer("nifti_axis", 2, "NIfTI volumes are cut into slices along this voxel "
                       "axis", lower_bound=0, upper_bound=2)

  def valid_windows(texts):
    try:
      for text in texts:
        parse_window(text)
    except ValueError:
      return False
    return True
  flags.register_validator("fallback_window", valid_windows,
                           f"--fallback_window takes MODALITY:CENTER:WIDTH with a modality of "
                           f"{records.MODALITIES}, e.g. CT:40:400")


def main(argv):
  """Flags not defined here (argv[1:]) are Apache Beam's pipeline options."""
  f = flags.FLAGS
  console.setup(f.verbose)
  read = readers.ReadOptions(
      modality=f.modality, nifti_axis=f.nifti_axis,
      fallback_windows=tuple(parse_window(t) for t in f.fallback_window)
      or readers.ReadOptions.fallback_windows)
  if f.error_paths and _inside(f.error_paths, f.output):
    raise app.UsageError(f"--error_paths={f.error_paths} is inside --output={f.output}, which "
                         "must stay free of file names: put it elsewhere")
  config = IngestConfig(input=f.input, output=f.output, salt=f.salt, size=f.size,
                        files_per_shard=f.files_per_shard, read=read, error_paths=f.error_paths)
  try:
    manifest = ingest(config, argv[1:])
  except (DatasetError, locks.FolderInUse, disk.OutOfSpace) as e:
    sys.exit(f"error: {e}")
  except signals.Stopped as e:  # a distinct status that cluster scripts requeue on
    print(f"stopped: {e}", file=sys.stderr, flush=True)
    sys.exit(signals.EXIT_STOPPED)
  print(f"ingest: {manifest['num_records']} records from {manifest['num_files']} files "
        f"{manifest['counts']} in {len(manifest['shards'])} shards at {f.output}; "
        f"{manifest['num_errors']} unreadable files listed in "
        f"{os.path.join(f.output, ERRORS)}")


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return os.path.commonpath([path, folder]) == folder


def parse_flags(argv):
  """absl's parser, leaving the flags it does not define (Apache Beam's options) to `main`."""
  try:
    return flags.FLAGS(argv, known_only=True)
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on "
             "flags.")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
