/*
 * kata-cc pause: the sandbox's infrastructure container process. It holds the pod's
 * namespaces open, reaps the zombies it inherits, and exits cleanly on SIGINT/SIGTERM.
 * Built statically by build-image.sh into the guest image at
 * /run/kata-containers/shared/containers/pause/rootfs/pause.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { _exit(sig == SIGTERM || sig == SIGINT ? 0 : 1); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        static const char v[] = "kata-cc pause 0.1\n";
        return write(1, v, sizeof v - 1) < 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    if (sigaction(SIGINT, &sa, NULL) || sigaction(SIGTERM, &sa, NULL)) return 2;
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, NULL)) return 3;
    for (;;) pause();
}
