"""A throw-away PostgreSQL server for the tests: a fresh cluster on 127.0.0.1, in a temp dir.

:func:`start` runs Debian's server binaries (``apt-get install postgresql``: they live in
``/usr/lib/postgresql/NN/bin``; ``RECSYS_PG_BIN`` names another directory): ``initdb`` in a new
temporary directory, ``pg_ctl start`` on a free TCP port of 127.0.0.1 (password authentication,
``scram-sha-256``), then a login role with a password that owns a new database. :meth:`Server.stop`
stops the server and removes the directory.

PostgreSQL refuses to run as root (``initdb`` exits "cannot be run as root"). Under root (CI
containers) the cluster belongs to an unprivileged user instead: the ``postgres`` account the
Debian package creates, else ``nobody``; the server process runs as that user, in a temp dir it owns.

The cluster is tuned for throw-away use (``fsync=off``, no synchronous commit): a crash of the
machine loses it, which is fine for tests and nothing else.

Run by hand (a server for a manual try; Ctrl-C stops and removes it)::

    python tests/pgserver.py
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD, DATABASE = "tuner", "s3cret-pw", "optuna"
ADMIN = "pgadmin"


class ServerUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed (or not where they are looked for)."""


def find_bindir() -> Path:
    """The directory of ``initdb``/``pg_ctl``: ``$RECSYS_PG_BIN`` when set, else the newest
    ``/usr/lib/postgresql/NN/bin`` or the ``PATH``."""
    env = os.environ.get("RECSYS_PG_BIN")

    def version(p: str) -> int:
        return int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0

    candidates = [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    which = shutil.which("initdb")
    if which and not env:
        candidates.append(str(Path(which).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    raise ServerUnavailable(
        "PostgreSQL's server binaries (initdb, pg_ctl) were not found in "
        + (f"RECSYS_PG_BIN={env}. " if env else "/usr/lib/postgresql/*/bin or the PATH. ")
        + "Install them (Debian/Ubuntu: apt-get install postgresql; .ci/run does) or set RECSYS_PG_BIN "
        "to their directory; RECSYS_TEST_POSTGRES=skip skips the PostgreSQL tests instead")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    bindir: Path
    root: Path          # the temp dir: data/, sockets, log, password file
    port: int
    run_as: tuple[int, int] | None   # (uid, gid) of the server process when we are root

    host: str = "127.0.0.1"
    user: str = USER
    password: str = PASSWORD
    database: str = DATABASE

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the test database (the tuner role, its password)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def url_with(self, **parts) -> str:
        d = {"user": self.user, "password": self.password, "host": self.host, "port": self.port,
             "database": self.database, **parts}
        return "postgresql://{user}:{password}@{host}:{port}/{database}".format(**d)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kw = {}
        if self.run_as is not None:
            kw = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
        env = {"PATH": f"{self.bindir}:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.root),
               "TZ": "UTC"}
        r = subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.root, env=env, capture_output=True,
                           text=True, timeout=120, **kw)
        if check and r.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{args[0]} failed ({r.returncode}): {r.stdout[-2000:]}{r.stderr[-2000:]}\n{tail}")
        return r

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the cluster's superuser over the cluster's Unix socket."""
        return self._run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root), "-p", str(self.port),
                         "-U", ADMIN, "-d", database, "-At", "-c", sql).stdout

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _unprivileged_user() -> tuple[int, int]:
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_uid, pw.pw_gid
    raise ServerUnavailable("running as root, but there is no 'postgres' or 'nobody' user to run the server as")


def start(bindir: Path | None = None) -> Server:
    """Start a fresh cluster; returns it running, with the role ``tuner`` owning the database ``optuna``."""
    bindir = bindir or find_bindir()
    run_as = _unprivileged_user() if os.geteuid() == 0 else None
    base = tempfile.gettempdir()
    if run_as is not None and not os.access(base, os.X_OK, effective_ids=False):
        base = "/tmp"
    root = Path(tempfile.mkdtemp(prefix="recsys-pg-", dir=base))
    if run_as is not None:
        os.chown(root, *run_as)
    root.chmod(0o700)
    last_err: Exception | None = None
    for _ in range(5):  # a free port can be taken between finding it and binding it: retry
        server = Server(bindir, root, free_port(), run_as)
        try:
            pwfile = root / "pw"
            pwfile.write_text(PASSWORD + "\n")
            if run_as is not None:
                os.chown(pwfile, *run_as)
            if not (root / "data").exists():
                # local (socket) connections trust the OS user who owns the cluster; TCP needs a password
                server._run("initdb", "-D", str(root / "data"), "-U", ADMIN, "--pwfile", str(pwfile),
                            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")
            opts = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
            server._run("pg_ctl", "-D", str(root / "data"), "-l", str(root / "server.log"), "-o", opts, "-w",
                        "-t", "60", "start")
            server.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
            server.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
            return server
        except Exception as e:  # noqa: BLE001 - port taken, retried; anything else is re-raised below
            last_err = e
            server._run("pg_ctl", "-D", str(root / "data"), "-m", "immediate", "-w", "stop", check=False)
            if "Address already in use" not in str(e) and "could not bind" not in str(e):
                break
            time.sleep(0.5)
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"could not start a PostgreSQL test server: {last_err}")


if __name__ == "__main__":
    s = start()
    print(s.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        s.stop()
