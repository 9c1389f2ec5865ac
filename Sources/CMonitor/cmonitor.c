#define _GNU_SOURCE
#include "cmonitor.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/epoll.h>

#define SDM_MAX_PASSED_FDS 16

ssize_t sdm_recv_with_fds(int socket, void *buffer, size_t length, int *fds, int capacity, int *fd_count) {
    union {
        char bytes[CMSG_SPACE(sizeof(int) * SDM_MAX_PASSED_FDS)];
        struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = buffer, .iov_len = length };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof(control.bytes);
    *fd_count = 0;
    ssize_t n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *passed = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, passed + i, sizeof(int));
            if (*fd_count < capacity) fds[(*fd_count)++] = fd;
            else close(fd);
        }
    }
    return n;
}

ssize_t sdm_send_with_fds(int socket, const void *buffer, size_t length, const int *fds, int fd_count) {
    if (fd_count < 0 || fd_count > SDM_MAX_PASSED_FDS) { errno = EINVAL; return -1; }
    union {
        char bytes[CMSG_SPACE(sizeof(int) * SDM_MAX_PASSED_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct iovec iov = { .iov_base = (void *)buffer, .iov_len = length };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd_count > 0) {
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fd_count);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * fd_count);
    }
    return sendmsg(socket, &msg, MSG_NOSIGNAL);
}

int sdm_writable_watch_create(int fd) {
    int watch = epoll_create1(EPOLL_CLOEXEC);
    if (watch < 0) return -1;
    struct epoll_event ev = { .events = EPOLLOUT, .data.fd = fd };
    if (epoll_ctl(watch, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(watch);
        return -1;
    }
    return watch;
}

int sdm_writable_watch_poll(int watch) {
    struct epoll_event ev;
    int n = epoll_wait(watch, &ev, 1, 0);
    return n == 1 && (ev.events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) ? 1 : 0;
}
