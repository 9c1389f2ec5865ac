#!/usr/bin/env python3
"""QMP recording proxy for a device model (started by dm-capture; runs in dom0).

usage: qmp-proxy.py LOGBASE REAL_DM ARGS...

For every QMP monitor on the command line (a `-chardev socket,id=ID,...,server=on` that a
`-mon chardev=ID` refers to) the proxy takes the place of the device model on the socket libxl
knows, and tells the device model to listen on a private path instead:
  path=P  -> the proxy listens on P; the DM gets path=P.dm
  fd=N    -> (libxl pre-opened the listening socket) the proxy accepts on fd N; the DM gets
             path=/run/xen/qmp-proxy-PID-ID.dm
Every connection libxl (or xentop, or `xl qemu-monitor-command`) opens is forwarded to the DM;
both directions are appended to LOGBASE.qmp-ID.jsonl, one JSON object per read:
  {"t": unix time, "conn": n, "dir": "libxl->dm" | "dm->libxl", "data": "...", "fds": [...]}
plus {"event": "accept" | "eof" | "error" ...} records. File descriptors passed with SCM_RIGHTS
(add-fd, getfd) are forwarded unchanged and logged as what they point to.

Then the proxy forks: the parent execs the real DM (same pid as before, which libxl recorded), the
child serves the proxy and dies with the DM (PR_SET_PDEATHSIG), so destroy leaves nothing behind.
"""
import array
import ctypes
import json
import os
import signal
import socket
import sys
import threading
import time

MAXFDS = 16


def parse(args):
    """Return (new_args, [(listen_socket_or_None, orig_path_or_None, fd_or_None, dm_path, cid)])."""
    mons = set()
    for i, a in enumerate(args[:-1]):
        if a == '-mon':
            for kv in args[i + 1].split(','):
                if kv.startswith('chardev='):
                    mons.add(kv.split('=', 1)[1])
    out, plans = [], []
    i = 0
    while i < len(args):
        a = args[i]
        if a == '-chardev' and i + 1 < len(args) and args[i + 1].startswith('socket,'):
            opts = args[i + 1].split(',')
            kv = dict(o.split('=', 1) if '=' in o else (o, '') for o in opts[1:])
            cid = kv.get('id', '')
            if cid in mons and kv.get('server', 'off') in ('on', ''):
                if 'path' in kv:
                    dm_path = kv['path'] + '.dm'
                    plans.append(('path', kv['path'], dm_path, cid))
                    opts = [('path=' + dm_path) if o.startswith('path=') else o for o in opts]
                elif 'fd' in kv:
                    dm_path = '/run/xen/qmp-proxy-%d-%s.dm' % (os.getpid(), cid)
                    plans.append(('fd', int(kv['fd']), dm_path, cid))
                    opts = [('path=' + dm_path) if o.startswith('fd=') else o for o in opts]
            out += [a, ','.join(opts)]
            i += 2
            continue
        out.append(a)
        i += 1
    return out, plans


def main():
    if len(sys.argv) < 3:
        print('usage: qmp-proxy.py LOGBASE REAL_DM ARGS...', file=sys.stderr)
        return 2
    base, real, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    newargs, plans = parse(args)
    listeners = []
    for kind, where, dm_path, cid in plans:
        try:
            if kind == 'path':
                try:
                    os.unlink(where)
                except FileNotFoundError:
                    pass
                ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                ls.bind(where)
                ls.listen(16)
            else:
                ls = socket.socket(fileno=os.dup(where))
                os.close(where)
            listeners.append((ls, dm_path, cid, '%s=%s' % (kind, where)))
        except OSError as e:
            print('qmp-proxy: cannot take over QMP socket %s=%s (%s); not proxying it' % (kind, where, e),
                  file=sys.stderr)
            newargs = [x.replace('path=' + dm_path, ('path=' + where) if kind == 'path' else 'fd=%d' % where)
                       for x in newargs]
    with open(base + '.argv-dm', 'w') as f:
        f.write('\n'.join([real] + newargs) + '\n')
    if not listeners:
        os.execv(real, [real] + newargs)
    parent = os.getpid()
    pid = os.fork()
    if pid != 0:
        # parent: become the device model (keeps the pid libxl knows)
        for ls, _, _, _ in listeners:
            ls.close()
        print('qmp-proxy: proxy pid %d records QMP in %s.qmp-*.jsonl' % (pid, base), file=sys.stderr)
        sys.stderr.flush()
        os.execv(real, [real] + newargs)
    serve(base, parent, listeners)


def serve(base, parent, listeners):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != parent:
        os._exit(0)
    os.setsid()
    keep = {ls.fileno() for ls, _, _, _ in listeners} | {2}
    devnull = os.open('/dev/null', os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    for fd in os.listdir('/proc/self/fd'):
        fd = int(fd)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threads = [threading.Thread(target=acceptor, args=(base,) + l, daemon=True) for l in listeners]
    for t in threads:
        t.start()
    while True:
        time.sleep(3600)


class Log:
    def __init__(self, path):
        self.f = open(path, 'a', buffering=1)
        self.lock = threading.Lock()

    def write(self, **rec):
        rec = dict(t=round(time.time(), 6), **rec)
        with self.lock:
            self.f.write(json.dumps(rec) + '\n')


def acceptor(base, ls, dm_path, cid, orig):
    log = Log('%s.qmp-%s.jsonl' % (base, cid))
    log.write(event='proxy', chardev=cid, listen=orig, dm=dm_path)
    n = 0
    while True:
        try:
            c, _ = ls.accept()
        except OSError as e:
            log.write(event='error', where='accept', error=str(e))
            time.sleep(1)
            continue
        n += 1
        threading.Thread(target=connection, args=(log, c, dm_path, n), daemon=True).start()


def connection(log, c, dm_path, n):
    t0 = time.time()
    d = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = t0 + 30
    while True:
        try:
            d.connect(dm_path)
            break
        except OSError as e:
            if time.time() > deadline:
                log.write(conn=n, event='error', where='connect to DM ' + dm_path, error=str(e))
                c.close()
                return
            time.sleep(0.1)
    log.write(conn=n, event='accept', connect_s=round(time.time() - t0, 3))
    for src, dst, tag in ((c, d, 'libxl->dm'), (d, c, 'dm->libxl')):
        threading.Thread(target=pump, args=(log, n, src, dst, tag), daemon=True).start()


def describe(fd):
    try:
        return os.readlink('/proc/self/fd/%d' % fd)
    except OSError:
        return '?'


def pump(log, n, src, dst, tag):
    try:
        while True:
            data, anc, _flags, _addr = src.recvmsg(65536, socket.CMSG_SPACE(MAXFDS * 4))
            fds = array.array('i')
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
            if not data and not fds:
                break
            rec = dict(conn=n, dir=tag, data=data.decode('utf-8', 'replace'))
            if fds:
                rec['fds'] = [describe(fd) for fd in fds]
            log.write(**rec)
            if fds:
                dst.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                for fd in fds:
                    os.close(fd)
            else:
                dst.sendall(data)
    except OSError as e:
        log.write(conn=n, dir=tag, event='error', error=str(e))
    log.write(conn=n, dir=tag, event='eof')
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


if __name__ == '__main__':
    sys.exit(main())
