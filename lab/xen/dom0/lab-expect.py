#!/usr/bin/env python3
"""Talk to a guest's console and prove there is a working shell behind it (runs in dom0).

usage: lab-expect.py (--unix PATH | --cmd COMMAND) --log FILE --timeout SECONDS
                     [--ready TEXT] [--probe LINE --want TEXT] [--every SECONDS]

  --unix PATH   connect to a unix socket (an HVM guest's emulated serial port: xl config
                serial='unix:PATH,server=on,wait=off', served by the device model)
  --cmd CMD     run CMD under a pseudo-terminal (e.g. "xl console NAME" for a PV console)
  --ready TEXT  first wait until TEXT has been seen (e.g. the guest init's marker)
  --probe LINE  then type LINE every --every seconds (default 5) until --want TEXT appears,
                e.g. --probe 'echo LAB-SUM=$((6*7))' --want LAB-SUM=42 (the typed line itself
                does not contain the answer, so a match proves a shell evaluated it)
Everything read is appended to --log. Exit 0 on success, 1 on timeout, 2 if the console closed.
Never waits longer than --timeout."""
import argparse
import os
import pty
import select
import signal
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument('--unix')
    g.add_argument('--cmd')
    ap.add_argument('--log', required=True)
    ap.add_argument('--timeout', type=float, required=True)
    ap.add_argument('--ready')
    ap.add_argument('--probe')
    ap.add_argument('--want')
    ap.add_argument('--every', type=float, default=5.0)
    a = ap.parse_args()
    deadline = time.time() + a.timeout
    log = open(a.log, 'ab', buffering=0)
    child = None
    if a.unix:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                s.connect(a.unix)
                break
            except OSError as e:
                if time.time() > deadline:
                    print('lab-expect: cannot connect to %s: %s' % (a.unix, e))
                    return 2
                time.sleep(0.2)
        rfd = s.fileno()
        write = s.sendall
    else:
        child, rfd = pty.fork()
        if child == 0:
            os.execvp('/bin/sh', ['/bin/sh', '-c', a.cmd])
        write = lambda b: os.write(rfd, b)
    buf = b''
    stage = 'ready' if a.ready else ('probe' if a.probe else 'done')
    next_probe = 0.0
    rc, why = 1, 'timeout'
    try:
        while stage != 'done':
            now = time.time()
            if now > deadline:
                break
            if stage == 'probe' and now >= next_probe:
                write((a.probe + '\r').encode())
                next_probe = now + a.every
            r, _, _ = select.select([rfd], [], [], 0.5)
            if not r:
                continue
            try:
                data = os.read(rfd, 65536)
            except OSError:
                data = b''
            if not data:
                rc, why = 2, 'console closed (EOF)'
                break
            log.write(data)
            buf = (buf + data)[-65536:]
            if stage == 'ready' and a.ready.encode() in buf:
                print('lab-expect: saw %r after %.1fs' % (a.ready, a.timeout - (deadline - time.time())))
                stage = 'probe' if a.probe else 'done'
                buf = b''
            if stage == 'probe' and a.want.encode() in buf:
                print('lab-expect: shell answered %r after %.1fs' % (a.want, a.timeout - (deadline - time.time())))
                stage = 'done'
        if stage == 'done':
            rc, why = 0, 'ok'
    finally:
        if child:
            try:
                os.kill(child, signal.SIGTERM)
                os.waitpid(child, 0)
            except OSError:
                pass
    if rc:
        print('lab-expect: FAILED (%s) while waiting for %r; last output: %r'
              % (why, a.ready if stage == 'ready' else a.want, buf[-300:].decode('utf-8', 'replace')))
    return rc


if __name__ == '__main__':
    sys.exit(main())
