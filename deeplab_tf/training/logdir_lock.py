"""One trainer per log directory: a lease file `<train_logdir>/train.lock`, through `tf.io.gfile`.

Two trainers writing into one log directory overwrite each other's checkpoints (both finish "at step
N"; every checkpoint is the last writer's). The chief therefore holds the log directory with a lease,
a small JSON file (host, pid, start time, last refresh, a random token) written through `tf.io.gfile`
(so that it works on `gs://` and `ram://` as the checkpoints do) and refreshed by a daemon thread
every `refresh_secs` seconds. A second trainer is refused with the holder's host, pid and start time.

A crashed trainer (kill -9, a lost machine) cannot remove its lease, so a lease is stale, and taken
over with a warning, when:
  * it was not refreshed for `stale_after_secs` seconds (default 10 minutes, twenty refresh periods:
    a live trainer refreshes it from its own thread whatever its step time), or
  * it names this host and a pid that is no longer running.
An unreadable lease file (e.g. cut short by a crash while being written) is stale too.

Object stores have no atomic "create if absent", so two trainers starting within the same instant
could both write a lease; each re-reads the file after writing it and only the one whose token is in
it goes on. The lease is released (removed) when training ends, normally or by an exception.
Only the chief holds the lease in multi-worker training: the other workers write no checkpoint there.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

import tensorflow as tf
from absl import logging

from deeplab_tf import io_utils
from deeplab_tf.errors import UserError

LOCK_FILENAME = "train.lock"
REFRESH_SECS = 30.0
STALE_AFTER_SECS = 600.0


class LogdirBusyError(UserError):
  """Another trainer holds the log directory (its host, pid and start time are in the message)."""


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # running, as another user
    return True
  return True


def _describe(lease: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(lease.get("started", 0))))
  return f"host {lease.get('host')}, pid {lease.get('pid')}, started {started}"


class LogdirLock:
  """The lease of one trainer on a log directory; see the module docstring.

  Args:
    logdir: the training log directory (any `tf.io.gfile` path; created if missing).
    refresh_secs: seconds between two refreshes of the lease by the daemon thread.
    stale_after_secs: a lease not refreshed for this long is stale (its trainer is presumed dead).
  """

  def __init__(self, logdir: str, refresh_secs: float = REFRESH_SECS,
               stale_after_secs: float = STALE_AFTER_SECS):
    self.path = os.path.join(logdir, LOCK_FILENAME)
    self.logdir = logdir
    self.refresh_secs, self.stale_after_secs = refresh_secs, stale_after_secs
    self.lease = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                  "token": uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def _read(self) -> Optional[dict]:
    try:
      lease = json.loads(io_utils.read_text(self.path))
    except (tf.errors.NotFoundError, FileNotFoundError):
      return None
    except (ValueError, tf.errors.OpError, OSError):
      return {}  # unreadable: stale
    return lease if isinstance(lease, dict) else {}

  def stale_reason(self, lease: dict) -> Optional[str]:
    """Why `lease` (another trainer's) is stale, or None if its trainer looks alive."""
    if not lease or "refreshed" not in lease:
      return "the lease file is unreadable"
    age = time.time() - float(lease["refreshed"])
    if age > self.stale_after_secs:
      return f"not refreshed for {age:.0f} s"
    if lease.get("host") == self.lease["host"] and not _pid_running(int(lease.get("pid", -1))):
      return f"pid {lease.get('pid')} is not running on this host"
    return None

  def _write(self):
    io_utils.atomic_write_text(self.path, json.dumps(dict(self.lease, refreshed=time.time())) + "\n")

  def acquire(self) -> "LogdirLock":
    """Takes the lease (a stale one with a warning) and starts refreshing it.

    Raises:
      LogdirBusyError: a live trainer holds the log directory.
    """
    tf.io.gfile.makedirs(self.logdir)
    held = self._read()
    if held is not None and held.get("token") != self.lease["token"]:
      reason = self.stale_reason(held)
      if reason is None:
        raise LogdirBusyError(
            f"--train_logdir={self.logdir} is in use by another deeplab_train ({_describe(held)}; "
            f"lease {self.path}): wait for it to finish, stop it, or choose another --train_logdir.")
      logging.warning("Taking over the stale lease %s of %s (%s).", self.path, _describe(held), reason)
    self._write()
    now_held = self._read()
    if not now_held or now_held.get("token") != self.lease["token"]:
      raise LogdirBusyError(
          f"--train_logdir={self.logdir} was taken at the same moment by another deeplab_train "
          f"({_describe(now_held or {})}): choose another --train_logdir.")
    self._thread = threading.Thread(target=self._refresh_loop, name="logdir-lease", daemon=True)
    self._thread.start()
    return self

  def _refresh_loop(self):
    while not self._stop.wait(self.refresh_secs):
      try:
        self._write()
      except (tf.errors.OpError, OSError) as e:  # a transient filesystem error: retry next period
        logging.warning("Could not refresh the lease %s: %s", self.path, e)

  def release(self):
    """Stops refreshing and removes the lease if it is still this trainer's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    held = self._read()
    if held and held.get("token") == self.lease["token"]:
      try:
        tf.io.gfile.remove(self.path)
      except tf.errors.NotFoundError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
