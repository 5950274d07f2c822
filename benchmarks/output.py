"""What every benchmark ends with: one summary line on stdout, and its figures as JSON."""
import json


def write(line: str, result: dict, json_path: str = ""):
  print(line)
  if json_path:
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)
