"""Tests for scripts/redis-server.sh. Run: python3 -m unittest discover -s scripts/tests

They start real redis-server processes on 127.0.0.1 and stop each one by its pidfile.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import unittest
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "redis-server.sh"


def redis_cli(url: str, *command: str) -> str:
    return subprocess.run(
        ["redis-cli", "-u", url, *command], check=True, capture_output=True, text=True, timeout=10
    ).stdout.strip()


def process_exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@unittest.skipUnless(shutil.which("redis-server") and shutil.which("redis-cli"), "needs redis-server and redis-cli")
class RedisServerScriptTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)
        self.addCleanup(self.run_script, "stop")

    def run_script(self, action: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SCRIPT), action, str(self.dir)], capture_output=True, text=True, timeout=60, env=env
        )

    def start(self, env: dict | None = None) -> str:
        result = self.run_script("start", env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.start_stderr = result.stderr
        return result.stdout.strip()

    def test_start_prints_url_and_answers_ping(self):
        url = self.start()
        self.assertRegex(url, r"^redis://127\.0\.0\.1:\d+/0$")
        self.assertEqual((self.dir / "url").read_text().strip(), url)
        self.assertEqual(redis_cli(url, "PING"), "PONG")

    def test_server_settings(self):
        url = self.start()
        self.assertEqual(redis_cli(url, "CONFIG", "GET", "appendonly").split("\n")[1], "yes")
        self.assertEqual(redis_cli(url, "CONFIG", "GET", "appendfsync").split("\n")[1], "always")
        self.assertEqual(redis_cli(url, "CONFIG", "GET", "bind").split("\n")[1], "127.0.0.1")
        self.assertEqual(redis_cli(url, "CONFIG", "GET", "dir").split("\n")[1], str(self.dir / "data"))

    def test_pidfile_names_the_server(self):
        url = self.start()
        pid = (self.dir / "redis.pid").read_text().strip()
        self.assertIn(f"process_id:{pid}", redis_cli(url, "INFO", "server"))

    def test_second_start_reuses_running_server(self):
        first = self.start()
        pid = (self.dir / "redis.pid").read_text()
        second = self.start()
        self.assertEqual(second, first)
        self.assertEqual((self.dir / "redis.pid").read_text(), pid)

    def test_stop_ends_server(self):
        self.start()
        pid = int((self.dir / "redis.pid").read_text())
        result = self.run_script("stop")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(process_exists(pid))
        self.assertFalse((self.dir / "redis.pid").exists())
        self.assertFalse((self.dir / "url").exists())

    def test_stop_without_server_succeeds(self):
        result = self.run_script("stop")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("not running", result.stderr)

    def test_stop_skips_pid_of_other_program(self):
        (self.dir / "redis.pid").write_text(f"{os.getpid()}\n")
        result = self.run_script("stop")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("stale", result.stderr)
        self.assertFalse((self.dir / "redis.pid").exists())

    def test_data_survives_restart(self):
        url = self.start()
        redis_cli(url, "SET", "spillway:test", "kept")
        self.assertEqual(self.run_script("stop").returncode, 0)
        url = self.start()
        self.assertEqual(redis_cli(url, "GET", "spillway:test"), "kept")

    def test_taken_port_is_retried(self):
        # A python3 shim makes the first port pick return a port that a listening
        # socket already holds, so redis-server fails to bind it.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            taken_port = taken.getsockname()[1]
            shim_dir = self.dir / "shim"
            shim_dir.mkdir()
            real_python = shutil.which("python3")
            shim = shim_dir / "python3"
            shim.write_text(
                "#!/bin/sh\n"
                f'if [ ! -e "{shim_dir}/used" ]; then touch "{shim_dir}/used"; echo {taken_port}; exit 0; fi\n'
                f'exec "{real_python}" "$@"\n'
            )
            shim.chmod(0o755)
            env = dict(os.environ, PATH=f"{shim_dir}:{os.environ['PATH']}")

            url = self.start(env)
        self.assertIn(f"port {taken_port} was taken", self.start_stderr)
        self.assertNotEqual(url, f"redis://127.0.0.1:{taken_port}/0")
        self.assertEqual(redis_cli(url, "PING"), "PONG")

    def test_usage_error(self):
        result = subprocess.run([str(SCRIPT), "restart", str(self.dir)], capture_output=True, text=True)
        self.assertEqual(result.returncode, 2)
        self.assertIn("Usage", result.stderr)


if __name__ == "__main__":
    unittest.main()
