// Thin C shim for the QMP monitor: the socket calls whose control-message macros (CMSG_*) do not
// import into Swift. No policy lives here.
#ifndef SWIFTDM_CMONITOR_H
#define SWIFTDM_CMONITOR_H

#include <stddef.h>
#include <sys/types.h>

// recvmsg() that also collects descriptors passed with SCM_RIGHTS. Up to `capacity` of them
// are stored in `fds` (close-on-exec) and their count in `*fd_count`; any beyond that are
// closed, so a hostile client cannot leak descriptors into us. Returns recvmsg's result.
ssize_t sdm_recv_with_fds(int socket, void *buffer, size_t length, int *fds, int capacity, int *fd_count);

// sendmsg() of `length` bytes with `fd_count` descriptors attached via SCM_RIGHTS (tests, bench).
ssize_t sdm_send_with_fds(int socket, const void *buffer, size_t length, const int *fds, int fd_count);

// An epoll instance watching `fd` for writability only: registering it as a reader on the main
// loop turns "socket writable" into "epoll fd readable". Returns the epoll fd or -1.
int sdm_writable_watch_create(int fd);
// Consumes readiness on a watch made above (never blocks); returns 1 if `fd` is writable.
int sdm_writable_watch_poll(int watch);

#endif
