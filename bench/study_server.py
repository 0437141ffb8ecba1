"""What the bench/*_study.py scripts share: a tlserve with one local worker
on loopback, started and stopped by the script, and waiting for a job."""

import os
import subprocess
import time


def start_server(build_dir, data_dir, extra_flags=()):
    """Starts build_dir's tlserve on a free loopback port, its data and log
    under data_dir; returns (process, "127.0.0.1:PORT")."""
    port_file = os.path.join(data_dir, "port")
    log = open(os.path.join(data_dir, "tlserve.log"), "w")
    server = subprocess.Popen(
        [os.path.join(build_dir, "server/tlserve"), "--listen=127.0.0.1:0",
         f"--port_file={port_file}", f"--data_dir={data_dir}/var",
         "--local_workers=1",
         f"--worker_binary={os.path.join(build_dir, 'worker/tlworker')}",
         *extra_flags],
        stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        if os.path.exists(port_file) and open(port_file).read().strip():
            return server, f"127.0.0.1:{open(port_file).read().strip()}"
        if server.poll() is not None:
            raise RuntimeError("tlserve exited; see " + log.name)
        time.sleep(0.1)
    server.kill()
    raise RuntimeError("tlserve did not start within 30 s")


def stop_server(server):
    """SIGTERM, then SIGKILL after 30 s."""
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()


def wait(client, job, timeout=3600):
    """The finished job; RuntimeError unless it SUCCEEDED."""
    done = client.watch(job.id, progress=False, timeout=timeout)
    if done.state != 4:  # SUCCEEDED
        raise RuntimeError(f"job {job.id} ({job.spec.display_name}) ended "
                           f"{done.state}: {done.error}")
    return done
