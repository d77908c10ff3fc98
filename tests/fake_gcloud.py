"""A stand-in `gcloud` for tests of tools/tpu_vm.sh: runs nothing, records
what each TPU worker would execute.

Every call appends JSON lines to `$FAKE_GCLOUD_LOG`: for
`compute tpus tpu-vm ssh NAME --worker=W --command=C`, one line
`{"worker": w, "command": C}` per worker (`--worker=all`: workers 0 ..
`$FAKE_TPU_WORKERS` − 1, default 4); for `scp` the same with the copy; for
any other call `{"argv": [...]}`.
"""

import json
import os
import sys


def main(argv) -> int:
  workers = int(os.environ.get("FAKE_TPU_WORKERS", "4"))
  options = dict(a[2:].split("=", 1) for a in argv if a.startswith("--")
                 and "=" in a)
  records = []
  if argv[:3] == ["compute", "tpus", "tpu-vm"] and argv[3] in ("ssh", "scp"):
    which = options.get("worker", "0")
    chosen = range(workers) if which == "all" else [int(which)]
    what = (options.get("command") if argv[3] == "ssh"
            else "scp " + " ".join(a for a in argv[4:]
                                   if not a.startswith("--")))
    records = [{"worker": w, "command": what} for w in chosen]
  else:
    records = [{"argv": argv}]
  with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
