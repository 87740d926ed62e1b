/* probe: the test image's one program. It reports what the kubelet and the
 * runtime do to a container, on stdout and in /dev/termination-log, as
 * `key=value` lines a test can parse:
 *
 *   probe echo WORDS...         print WORDS and exit 0
 *   probe hold [--name N] [--exit-on-term]
 *                               record start, then every signal that arrives
 *                               (and when); without --exit-on-term it keeps
 *                               running, so only SIGKILL ends it
 *   probe shm [PATH]            print the size of the filesystem at PATH
 *                               (default /dev/shm) as statfs reports it
 *
 * Lines are appended to the termination log, so the records of PID 1 and of
 * a child (the shell-form test) both survive a SIGKILL.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#define TERMINATION_LOG "/dev/termination-log"

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One write per record, so concurrent writers never interleave a line. */
static void record(const char *line) {
    size_t n = strlen(line);
    (void)!write(STDOUT_FILENO, line, n);
    int fd = open(TERMINATION_LOG, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd >= 0) {
        (void)!write(fd, line, n);
        close(fd);
    }
}

static const char *signame(int sig) {
    switch (sig) {
    case SIGTERM: return "TERM";
    case SIGINT: return "INT";
    case SIGHUP: return "HUP";
    case SIGQUIT: return "QUIT";
    case SIGUSR1: return "USR1";
    case SIGUSR2: return "USR2";
    default: return "OTHER";
    }
}

/* The handler only notes the signal and its arrival time; the main loop
 * does the I/O. */
static volatile sig_atomic_t pending_sig;
static volatile long long pending_at;

static void on_signal(int sig) {
    if (!pending_sig) {
        pending_at = now_ms();
        pending_sig = sig;
    }
}

static int hold(int argc, char **argv) {
    const char *name = "main";
    int exit_on_term = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--name") && i + 1 < argc)
            name = argv[++i];
        else if (!strcmp(argv[i], "--exit-on-term"))
            exit_on_term = 1;
        else {
            fprintf(stderr, "probe hold: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    sigset_t block, old;
    sigemptyset(&block);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigfillset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        sigaction(sigs[i], &sa, NULL);
        sigaddset(&block, sigs[i]);
    }
    /* Blocked outside sigsuspend, so no signal slips in between the check
     * and the wait. */
    sigprocmask(SIG_BLOCK, &block, &old);
    char line[256];
    snprintf(line, sizeof line, "event=started name=%s pid=%d at_ms=%lld\n", name, (int)getpid(), now_ms());
    record(line);
    for (;;) {
        while (!pending_sig)
            sigsuspend(&old);
        int sig = pending_sig;
        long long at = pending_at;
        pending_sig = 0;
        snprintf(line, sizeof line, "event=signal name=%s pid=%d signal=%s at_ms=%lld\n", name, (int)getpid(),
                 signame(sig), at);
        record(line);
        if (exit_on_term && (sig == SIGTERM || sig == SIGINT))
            return 0;
    }
}

static int shm(const char *path) {
    struct statfs st;
    if (statfs(path, &st) != 0) {
        fprintf(stderr, "probe shm: statfs %s: %s\n", path, strerror(errno));
        return 1;
    }
    char line[256];
    snprintf(line, sizeof line, "event=statfs path=%s bytes=%llu type=0x%lx\n", path,
             (unsigned long long)st.f_blocks * (unsigned long long)st.f_bsize, (unsigned long)st.f_type);
    record(line);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "echo")) {
        for (int i = 2; i < argc; i++)
            printf("%s%s", argv[i], i + 1 < argc ? " " : "\n");
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "hold"))
        return hold(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "shm"))
        return shm(argc >= 3 ? argv[2] : "/dev/shm");
    fprintf(stderr, "usage: probe echo WORDS... | hold [--name N] [--exit-on-term] | shm [PATH]\n");
    return 2;
}
