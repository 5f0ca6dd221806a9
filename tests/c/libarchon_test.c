/*
 * libarchon_test: drives a running archon through libarchon, as a C program would, and checks
 * every answer. Built with cc against the installed archon.h and libarchon (dynamically and
 * statically) and run by tests/tests/libarchon.rs.
 *
 * usage: libarchon_test SOCKET   (with ARCHON_SOCKET set to the same path)
 *
 * Prints one line per check, "ok N - what" or "not ok N - what: why", then "1..N"; exits 0
 * when every check passed, 1 otherwise.
 */
#define _GNU_SOURCE
#include <archon.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks;
static int failed;

/* Records one check: "ok N - what", or "not ok N - what: why" with libarchon's last error. */
static int check(int ok, const char *what, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, what);
    vsnprintf(text, sizeof text, what, ap);
    va_end(ap);
    checks++;
    if (ok) {
        printf("ok %d - %s\n", checks, text);
    } else {
        char message[512];
        archon_last_error(message, sizeof message);
        failed++;
        printf("not ok %d - %s (last error: \"%s\", errno %d)\n", checks, text, message,
               archon_last_os_error());
    }
    return ok;
}

/* The thread's last error message. */
static const char *last_error(void)
{
    static char message[512];
    archon_last_error(message, sizeof message);
    return message;
}

/* Everything readable from fd until end of file, NUL-terminated, into buf. */
static void read_all(int fd, char *buf, size_t size)
{
    size_t n = 0;
    while (n + 1 < size) {
        ssize_t r = read(fd, buf + n, size - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
}

/* A child of this program that waits to be killed (and dies with this program). */
static pid_t fork_sleeper(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        for (;;)
            pause();
    }
    return pid;
}

/* What the status callback looks for, and what it found. */
struct search {
    char name[32];
    int rows;
    int found;
    int stop_after;
    char kind[16];
    char state[16];
    pid_t pid;
    int last_status;
    int ready;
    char sockets[16];
};

static int find_row(const archon_status_row *row, void *ctx)
{
    struct search *s = ctx;
    s->rows++;
    if (strcmp(row->name, s->name) == 0) {
        s->found++;
        snprintf(s->kind, sizeof s->kind, "%s", row->kind);
        snprintf(s->state, sizeof s->state, "%s", row->state);
        s->pid = row->pid;
        s->last_status = row->last_status;
        s->ready = row->ready;
        snprintf(s->sockets, sizeof s->sockets, "%s", row->sockets ? row->sockets : "(null)");
    }
    return s->stop_after > 0 && s->rows >= s->stop_after;
}

/* Looks for the status row of process `id`. */
static archon_result status_of(archon *a, uint64_t id, struct search *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%" PRIu64, id);
    return archon_status(a, NULL, find_row, s);
}

static void null_arguments(void)
{
    const char *argv[] = {"/bin/true", NULL};
    char buf[64];
    archon *none = NULL;
    check(archon_ping(NULL) == ARCHON_RESULT_INVALID_ARGUMENT, "a NULL handle: invalid argument");
    check(strstr(last_error(), "NULL") != NULL, "and the message says so: \"%s\"", last_error());
    check(archon_request(NULL, "Ping", NULL, 0, buf, sizeof buf, NULL) ==
              ARCHON_RESULT_INVALID_ARGUMENT,
          "archon_request with a NULL handle: invalid argument");
    check(archon_run(NULL, argv, NULL, NULL, 0, NULL) == ARCHON_RESULT_INVALID_ARGUMENT,
          "archon_run with a NULL handle: invalid argument");
    check(archon_connect(NULL, NULL) == ARCHON_RESULT_INVALID_ARGUMENT,
          "archon_connect with a NULL out: invalid argument");
    check(archon_connect("/nonexistent/archon.sock", &none) == ARCHON_RESULT_CANNOT_CONNECT &&
              none == NULL && archon_last_os_error() == ENOENT,
          "a socket that is not there: cannot connect, ENOENT, no handle");
    archon_close(NULL);
}

static void raw_requests(archon *a)
{
    char buf[256], small[3];
    size_t len = 0;
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC), p[2];

    check(archon_request(a, "Ping", NULL, 0, buf, sizeof buf, &len) == ARCHON_RESULT_OK &&
              strcmp(buf, "Pong\n") == 0 && len == 5,
          "raw: Ping gives \"Pong\\n\"");

    check(archon_request(a, "Ping\n", NULL, 0, small, sizeof small, &len) ==
                  ARCHON_RESULT_BUFFER_TOO_SMALL &&
              len == 5 && strcmp(small, "Po") == 0,
          "raw: a small buffer is too small, reports 5 bytes, holds \"Po\"");
    check(archon_last_reply(a, buf, sizeof buf, &len) == ARCHON_RESULT_OK &&
              strcmp(buf, "Pong\n") == 0,
          "raw: archon_last_reply copies the whole reply again");

    check(archon_request(a, "Frobnicate", NULL, 0, buf, sizeof buf, &len) ==
                  ARCHON_RESULT_REFUSED &&
              strcmp(buf, "Error,unknown request: Frobnicate\n") == 0,
          "raw: an unknown verb is refused, the Error reply copied");
    check(strcmp(last_error(), "unknown request: Frobnicate") == 0,
          "raw: the last error is archon's reason: \"%s\"", last_error());

    check(archon_request(a, "Ping\nPing", NULL, 0, buf, sizeof buf, &len) ==
              ARCHON_RESULT_INVALID_ARGUMENT,
          "raw: two requests in one line are refused before sending");
    check(archon_ping(a) == ARCHON_RESULT_OK, "raw: the connection is still in step");

    if (pipe2(p, O_CLOEXEC) != 0 || devnull < 0) {
        check(0, "pipe2 and /dev/null: %s", strerror(errno));
        return;
    }
    int fds[] = {devnull, p[1]};
    int rc = archon_request(a, "Run,/bin/echo,via raw", fds, 2, buf, sizeof buf, &len);
    close(p[1]);
    char out[64];
    read_all(p[0], out, sizeof out);
    close(p[0]);
    check(rc == ARCHON_RESULT_OK && strcmp(buf, "ExitStatus,0\n") == 0 &&
              strcmp(out, "via raw\n") == 0,
          "raw: Run with fds attached writes to our pipe (\"%.*s\")", (int)strcspn(out, "\n"),
          out);
    close(devnull);
}

static void runs(archon *a)
{
    const char *exit3[] = {"/bin/sh", "-c", "exit 3", NULL};
    const char *echo[] = {"/bin/sh", "-c", "echo \"$GREETING\" ${HOME-unset}", NULL};
    const char *env[] = {"GREETING=hello, world", "HOME", NULL};
    const char *term[] = {"/bin/sh", "-c", "kill -TERM $$", NULL};
    const char *missing[] = {"/no/such/program", NULL};
    int status = -1, p[2], rc;
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

    check(archon_run(a, exit3, NULL, NULL, 0, &status) == ARCHON_RESULT_OK &&
              WIFEXITED(status) && WEXITSTATUS(status) == 3,
          "run: /bin/sh -c 'exit 3' gives 3");

    if (pipe2(p, O_CLOEXEC) != 0 || devnull < 0) {
        check(0, "pipe2 and /dev/null: %s", strerror(errno));
        return;
    }
    int fds[] = {devnull, p[1], p[1]};
    rc = archon_run(a, echo, env, fds, 3, &status);
    close(p[1]);
    char out[128];
    read_all(p[0], out, sizeof out);
    close(p[0]);
    check(rc == ARCHON_RESULT_OK && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
              strcmp(out, "hello, world unset\n") == 0,
          "run: stdio fds and envp: the output came through our pipe (\"%.*s\")",
          (int)strcspn(out, "\n"), out);

    check(archon_run(a, term, NULL, NULL, 0, &status) == ARCHON_RESULT_OK &&
              WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM,
          "run: a command killed by SIGTERM reads as WIFSIGNALED, WTERMSIG == SIGTERM");

    rc = archon_run(a, missing, NULL, NULL, 0, &status);
    check(rc == ARCHON_RESULT_REFUSED && strstr(last_error(), "/no/such/program") != NULL,
          "run: a missing program is refused: \"%s\"", last_error());

    check(archon_run(a, NULL, NULL, NULL, 0, &status) == ARCHON_RESULT_INVALID_ARGUMENT,
          "run: a NULL argv is an invalid argument");
    int four[] = {devnull, devnull, devnull, devnull};
    check(archon_run(a, exit3, NULL, four, 4, &status) == ARCHON_RESULT_INVALID_ARGUMENT,
          "run: four stdio fds are an invalid argument");
    close(devnull);
}

static void daemons(archon *a)
{
    const char *sleep100[] = {"sleep", "100", NULL};
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    uint64_t id = 0;
    pid_t pid = 0;
    struct search s;
    int status = -1;

    int rc = archon_start_daemon(a, sleep100, NULL, &devnull, 1, &id, &pid);
    close(devnull);
    if (!check(rc == ARCHON_RESULT_OK && id > 0 && pid > 0 && kill(pid, 0) == 0,
               "daemon: started sleep 100: id %" PRIu64 ", pid %d", id, (int)pid))
        return;

    rc = status_of(a, id, &s);
    check(rc == ARCHON_RESULT_OK && s.found == 1 &&
              strcmp(s.kind, "daemon") == 0 && strcmp(s.state, "running") == 0 &&
              s.pid == pid && s.last_status == ARCHON_STATUS_NONE && s.ready == -1 &&
              strcmp(s.sockets, "") == 0,
          "status: the daemon's row: kind %s, state %s, pid %d, sockets \"%s\", of %d rows",
          s.kind, s.state, (int)s.pid, s.sockets, s.rows);
    memset(&s, 0, sizeof s);
    s.stop_after = 1;
    check(archon_status(a, NULL, find_row, &s) == ARCHON_RESULT_OK && s.rows == 1,
          "status: a callback that returns non-zero sees no more rows");

    check(archon_stop(a, id, 5000, &status) == ARCHON_RESULT_OK && WIFSIGNALED(status) &&
              WTERMSIG(status) == SIGTERM,
          "stop: the daemon ended by SIGTERM");
    rc = status_of(a, id, &s);
    check(rc == ARCHON_RESULT_OK && s.found == 1 &&
              strcmp(s.state, "exited") == 0 && WIFSIGNALED(s.last_status) &&
              WTERMSIG(s.last_status) == SIGTERM,
          "status: the stopped daemon's row: state %s, last status SIGTERM", s.state);
    rc = archon_stop(a, id, -1, &status);
    check(rc == ARCHON_RESULT_REFUSED, "stop: a second stop is refused: \"%s\"", last_error());
}

static void errors(archon *a)
{
    const char *nosuch[] = {"nosuch", NULL};
    const char *reason = "no such service: nosuch";
    char small[8];
    struct search s;
    memset(&s, 0, sizeof s);

    check(archon_status(a, nosuch, find_row, &s) == ARCHON_RESULT_REFUSED && s.rows == 0,
          "error: Status of an unknown service is refused");
    check(strcmp(last_error(), reason) == 0, "error: the message is the reason: \"%s\"",
          last_error());
    check(archon_last_error(NULL, 0) == strlen(reason),
          "error: archon_last_error(NULL, 0) gives the length needed");
    memset(small, 'x', sizeof small);
    check(archon_last_error(small, sizeof small) == strlen(reason) &&
              strcmp(small, "no such") == 0,
          "error: a small buffer gets the start, NUL-terminated (\"%s\")", small);
    int rc = archon_stop(a, 999999, -1, NULL);
    check(rc == ARCHON_RESULT_REFUSED && strstr(last_error(), "999999") != NULL,
          "error: stopping an id that is no process is refused: \"%s\"", last_error());
    check(archon_strerror(ARCHON_RESULT_REFUSED) != NULL &&
              strcmp(archon_strerror(ARCHON_RESULT_REFUSED), archon_strerror(ARCHON_RESULT_OK)),
          "error: archon_strerror: \"%s\"", archon_strerror(ARCHON_RESULT_REFUSED));
}

static void monitors(archon *a)
{
    uint64_t id = 0, id2 = 0;
    pid_t pid = 0;
    int status = -1, wstatus = 0;
    struct search s;

    pid_t child = fork_sleeper();
    int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    if (!check(child > 0 && pidfd >= 0, "monitor: forked %d, pidfd_open: %s", (int)child,
               pidfd >= 0 ? "ok" : strerror(errno)))
        return;
    int rc = archon_monitor_fd(a, pidfd, &id, &pid);
    close(pidfd);
    check(rc == ARCHON_RESULT_OK && id > 0 && pid == child,
          "monitor: MonitorFD of our child's pidfd: id %" PRIu64 ", pid %d", id, (int)pid);
    rc = status_of(a, id, &s);
    check(rc == ARCHON_RESULT_OK && s.found == 1 &&
              strcmp(s.kind, "monitor") == 0 && s.pid == child,
          "monitor: its status row has kind monitor (%s)", s.kind);
    /* archon is not its parent: how it ended may be unknown to archon until we reap it. */
    rc = archon_stop(a, id, 5000, &status);
    check(rc == ARCHON_RESULT_OK &&
              (status == ARCHON_STATUS_UNKNOWN ||
               (WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM)),
          "monitor: archon stopped it (status %d)", status);
    check(waitpid(child, &wstatus, 0) == child && WIFSIGNALED(wstatus) &&
              WTERMSIG(wstatus) == SIGTERM,
          "monitor: our child died of archon's SIGTERM");

    pid_t child2 = fork_sleeper();
    rc = archon_monitor(a, child2, &id2);
    check(rc == ARCHON_RESULT_OK && id2 > id, "monitor: Monitor by pid %d: id %" PRIu64,
          (int)child2, id2);
    check(archon_stop(a, id2, 5000, NULL) == ARCHON_RESULT_OK &&
              waitpid(child2, &wstatus, 0) == child2 && WIFSIGNALED(wstatus) &&
              WTERMSIG(wstatus) == SIGTERM,
          "monitor: stopping it by id killed our second child");
    check(archon_monitor_fd(a, -1, NULL, NULL) == ARCHON_RESULT_INVALID_ARGUMENT,
          "monitor: a negative pidfd is an invalid argument");
}

int main(int argc, char **argv)
{
    archon *a = NULL, *by_path = NULL, *by_empty = NULL;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: libarchon_test SOCKET\n");
        return 100;
    }

    null_arguments();
    if (!check(archon_connect(NULL, &a) == ARCHON_RESULT_OK && a != NULL,
               "connect: the default socket ($ARCHON_SOCKET)")) {
        printf("1..%d\n", checks);
        return 1;
    }
    check(archon_connect(argv[1], &by_path) == ARCHON_RESULT_OK && archon_ping(by_path) == 0,
          "connect: an explicit path");
    check(archon_connect("", &by_empty) == ARCHON_RESULT_OK && archon_ping(by_empty) == 0,
          "connect: an empty path means the default");
    archon_close(by_path);
    archon_close(by_empty);
    check(archon_set_timeout(a, 0) == ARCHON_RESULT_OK, "set_timeout: 0 waits for ever");

    raw_requests(a);
    runs(a);
    daemons(a);
    errors(a);
    monitors(a);
    check(archon_ping(a) == ARCHON_RESULT_OK, "the connection is in step at the end");
    archon_close(a);

    printf("1..%d\n", checks);
    return failed ? 1 : 0;
}
