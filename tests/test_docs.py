"""The README and docs/ stay short, linked, and runnable as written."""
import glob
import os
import re
import subprocess
import time

import pytest

from helpers import ROOT, in_parallel, main_env

DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
# Paths in the docs that stand for the user's own: the tests put them in a temporary folder.
PLACEHOLDER = re.compile(r"(?<=[=\s])/(data|runs|shared|tmp)/")


def documented_commands(path):
  """The shell commands of a page's ```bash blocks, continuation lines joined; installs and
  the test command (this suite) left out."""
  text = open(path).read()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for command in re.sub(r"\\\n\s*", "", block).splitlines():
      command = command.strip()
      if command and not command.startswith(("pip ", "python -m pytest", "#")):
        commands.append(re.sub(r"^srun .*?(?=python)", "", command))
  return commands


def test_the_readme_is_short_and_links_every_docs_page():
  readme = open(DOCS[0]).read()
  assert len(readme.encode()) <= 8 * 1024
  for page in DOCS[1:]:
    assert f"(docs/{os.path.basename(page)})" in readme, page
  for path in DOCS:
    for link in re.findall(r"\]\(([^)#]+)\)", open(path).read()):
      if not link.startswith("http"):
        assert os.path.exists(os.path.join(os.path.dirname(path), link)), (path, link)


def localised(command, tmp_path):
  return PLACEHOLDER.sub(lambda m: f"{tmp_path}{m.group(0)}", command)


@pytest.mark.slow
def test_every_documented_command_parses(tmp_path):
  """Each command's flags (config files, --config overrides, Beam options) parse as written:
  absl's --only_check_args stops every entry point right after parsing."""
  os.makedirs(tmp_path / "data" / "raw")
  commands = [c for path in DOCS for c in documented_commands(path)]
  assert len(commands) >= 12 and any("vismae_jax.main" in c for c in commands)

  def parse(command):
    return subprocess.run(["bash", "-c", localised(command, tmp_path) + " --only_check_args"],
                          cwd=ROOT, env=dict(main_env(), SECRET="salt"), capture_output=True,
                          text=True, timeout=300)
  for command, proc in zip(commands, in_parallel(parse, commands)):
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"


@pytest.mark.slow
def test_the_quick_start_starts_training(tmp_path):
  """The README's quick start as written, until its first logged step (then stopped)."""
  command = next(c for c in documented_commands(DOCS[0]) if "vismae_jax.main" in c)
  assert ":sample" in command
  proc = subprocess.Popen(["bash", "-c", localised(command, tmp_path)], cwd=ROOT,
                          env=main_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  deadline, seen = time.time() + 300, []
  try:
    for line in proc.stdout:
      seen.append(line)
      if re.search(r"step 100/2000 loss \d", line) or time.time() > deadline:
        break
  finally:
    proc.kill()
    proc.wait()
  assert re.search(r"step 100/2000 loss \d", seen[-1]), "".join(seen[-20:])
  assert os.path.exists(tmp_path / "tmp" / "vismae_sample" / "sample_shards")


@pytest.mark.slow
def test_the_own_dataset_walkthrough_runs(tmp_path):
  """docs/your_data.md's commands in order, each run shortened to a few steps, 2 folds and
  all the labels."""
  shorter = {"configs/us.py": " --config.total_steps=10",
             "configs/finetune_cls.py": " --config.total_steps=10 --config.protocol.max_folds=2 "
                                        "--config.protocol.fractions='(1.0,)'"}
  for command in documented_commands(os.path.join(ROOT, "docs", "your_data.md")):
    command = localised(command, tmp_path) + next(
        (extra for config, extra in shorter.items() if config in command), "")
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT,
                          env=dict(main_env(), SECRET="salt"), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
  report = open(tmp_path / "tmp" / "my_finetuning" / "report.md").read()
  assert "| 100% | pretrained |" in report and "Folds: 5 folds drawn" in report
  assert "not grouped" in report  # the sample's CSV names no patients, and the report says so
