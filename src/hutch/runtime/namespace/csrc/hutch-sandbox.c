/*
 * hutch-sandbox: builds one namespace sandbox and then serves as its PID 1.
 *
 * Written in C rather than using bwrap/nsjail because the sandbox needs three things those
 * launchers do not offer together: a per-sandbox uid range with an idmapped (shared, read-only)
 * template layer, a loop-mounted disk quota that lives only in the sandbox's mount namespace, and
 * a PID 1 that forks commands on request (so exec costs one fork inside the sandbox instead of an
 * interpreter or launcher start on the host).
 *
 * Launcher (runs as host root, started by the runner):
 *   hutch-sandbox --id ID --uid-base N --state-dir DIR --disk IMG [--lower DIR]... \
 *                 [--cgroup-procs FILE]... [--seccomp 1]
 *   1. joins the sandbox cgroups, clones a child into new user/pid/mount/net/ipc/uts/cgroup
 *      namespaces and maps uid/gid 0..65535 of the child to uid-base..uid-base+65535;
 *   2. enters the child's mount namespace and mounts: every lower layer idmapped to the child's
 *      user namespace, the ext4 disk image (loop, autoclear) holding the writable layer, and the
 *      overlay of both at DIR/rootfs. These mounts exist only in the sandbox's mount namespace,
 *      so they vanish (and the loop device detaches) when the sandbox dies;
 *   3. prints the child's host pid and exits once the child reports ready.
 * Child (becomes PID 1 of the sandbox): mounts /proc, /dev, /dev/pts, /dev/shm, /sys (ro),
 *   pivots into the rootfs, sets the hostname, brings up lo, drops the capability bounding set,
 *   sets no_new_privs and a seccomp filter, then serves the control socket DIR/ctl.sock.
 *
 * Control protocol (SOCK_SEQPACKET, one message per packet; fields are NUL-separated tokens):
 *   runner -> init: "spawn" ID then key=value tokens: uid= gid= cwd= pty=COLSxROWS, arg=..., env=...
 *                   (ancillary SCM_RIGHTS: stdin, stdout, stderr unless pty)
 *                   "signal" ID pid= sig=
 *   init -> runner: "spawned" ID pid=  (with the PTY master as SCM_RIGHTS when pty)
 *                   "error" ID errno= msg=
 *                   "exit" pid= code= signal=
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/loop.h>
#include <linux/mount.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef MS_REC
#define MS_REC 16384
#endif
#ifndef MNT_DETACH
#define MNT_DETACH 2
#endif
#define MAX_LOWER 16
#define MAX_CG 8
#define MAX_MSG (600 * 1024)
#define MAX_CLIENTS 32
#define MAX_PROCS 4096

/* mount(2) without <sys/mount.h>, whose definitions clash with <linux/mount.h>. */
static int do_mount(const char *src, const char *dst, const char *fs, unsigned long fl, const void *data) {
    return (int)syscall(SYS_mount, src, dst, fs, fl, data);
}
static int do_umount2(const char *t, int fl) { return (int)syscall(SYS_umount2, t, fl); }

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "hutch-sandbox: ");
    vfprintf(stderr, fmt, ap);
    if (errno) fprintf(stderr, ": %s", strerror(errno));
    fprintf(stderr, "\n");
    va_end(ap);
    _exit(1);
}

struct opts {
    const char *id, *state_dir, *disk;
    const char *lower[MAX_LOWER];
    int nlower;
    const char *cgroup_procs[MAX_CG];
    int ncg;
    unsigned long uid_base;
    int seccomp;
    char loopdev[64]; /* the disk's loop device, reported to the runner with PID 1 */
};

static void write_file(const char *path, const char *buf) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die("open %s", path);
    ssize_t n = write(fd, buf, strlen(buf));
    if (n < 0 || (size_t)n != strlen(buf)) die("write %s", path);
    close(fd);
}

/* Hand the rootfs directory to the child as an fd: it then needs no search permission on the
 * host path above it (the runner's data dir may sit below directories only root can enter). */
static void send_fd(int sock, char c, int fd) {
    struct iovec iov = {&c, 1};
    union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = u.b;
    mh.msg_controllen = sizeof u.b;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    if (sendmsg(sock, &mh, 0) != 1) die("send rootfs fd");
}

static int recv_fd(int sock, char want) {
    char c = 0;
    struct iovec iov = {&c, 1};
    union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = u.b;
    mh.msg_controllen = sizeof u.b;
    ssize_t n;
    do n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
    if (n != 1 || c != want) { errno = 0; die("sandbox setup partner went away"); }
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    if (!cm || cm->cmsg_type != SCM_RIGHTS) { errno = 0; die("no rootfs fd"); }
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof(int));
    return fd;
}

static void sync_write(int fd, char c) {
    if (write(fd, &c, 1) != 1) die("sync write");
}
static char sync_read(int fd) {
    char c = 0;
    ssize_t n;
    do n = read(fd, &c, 1); while (n < 0 && errno == EINTR);
    if (n != 1) { errno = 0; die("sandbox setup partner went away"); }
    return c;
}

/* ---------------------------------------------------------------- launcher: mounts */

/* Attach the disk image to a free loop device that detaches itself when unmounted. */
static int attach_loop(const char *image, char *devpath, size_t len) {
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) die("open /dev/loop-control");
    int backing = open(image, O_RDWR | O_CLOEXEC);
    if (backing < 0) die("open disk image %s", image);
    for (int attempt = 0; attempt < 64; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) die("LOOP_CTL_GET_FREE");
        snprintf(devpath, len, "/dev/loop%d", n);
        int dev = open(devpath, O_RDWR | O_CLOEXEC);
        if (dev < 0) die("open %s", devpath);
        struct loop_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.fd = (uint32_t)backing;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "%s", image);
        if (ioctl(dev, LOOP_CONFIGURE, &cfg) == 0) {
            close(backing);
            close(ctl);
            return dev;
        }
        int e = errno;
        close(dev);
        if (e == EINVAL) { /* direct I/O unsupported by the backing fs: retry without it */
            cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
            dev = open(devpath, O_RDWR | O_CLOEXEC);
            if (dev >= 0 && ioctl(dev, LOOP_CONFIGURE, &cfg) == 0) { close(backing); close(ctl); return dev; }
            if (dev >= 0) close(dev);
        }
        if (e != EBUSY && e != EINVAL) { errno = e; die("LOOP_CONFIGURE %s", devpath); }
    }
    errno = EBUSY;
    die("no free loop device");
    return -1;
}

static void idmapped_bind(const char *src, const char *dst, int userns_fd) {
    int fd = (int)syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (fd < 0) die("open_tree %s", src);
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    attr.userns_fd = (uint64_t)userns_fd;
    if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0)
        die("idmap %s", src);
    if (syscall(SYS_move_mount, fd, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0) die("move_mount %s", dst);
    close(fd);
}

static void mkdir_p(const char *path, mode_t mode) {
    if (mkdir(path, mode) < 0 && errno != EEXIST) die("mkdir %s", path);
}

/* Runs in the launcher after it joined the child's mount namespace. */
static void build_rootfs(struct opts *o, pid_t child) {
    char path[4096], p2[4096], data[16384];
    char *loopdev = o->loopdev;
    snprintf(path, sizeof path, "/proc/%d/ns/user", child);
    int userns = open(path, O_RDONLY | O_CLOEXEC);
    if (userns < 0) die("open %s", path);

    snprintf(path, sizeof path, "/proc/%d/ns/mnt", child);
    int mntns = open(path, O_RDONLY | O_CLOEXEC);
    if (mntns < 0) die("open %s", path);
    if (setns(mntns, CLONE_NEWNS) < 0) die("setns mnt");
    close(mntns);

    snprintf(path, sizeof path, "%s/mnt", o->state_dir);
    mkdir_p(path, 0700);
    /* A private tmpfs holds every mount point, so nothing is created on the host's disk. */
    if (do_mount("hutch", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0711,size=64k") < 0)
        die("mount staging tmpfs");

    size_t off = 0;
    for (int i = o->nlower - 1; i >= 0; i--) { /* overlay wants the top-most layer first */
        snprintf(p2, sizeof p2, "%s/mnt/l%d", o->state_dir, i);
        mkdir_p(p2, 0700);
        idmapped_bind(o->lower[i], p2, userns);
        off += (size_t)snprintf(data + off, sizeof data - off, "%s%s", off ? ":" : "lowerdir=", p2);
        if (off >= sizeof data) { errno = 0; die("too many lower layers"); }
    }

    int dev = attach_loop(o->disk, loopdev, sizeof o->loopdev);
    snprintf(p2, sizeof p2, "%s/mnt/disk", o->state_dir);
    mkdir_p(p2, 0700);
    /* noinit_itable: the sparse image's unwritten inode tables already read as zeros */
    if (do_mount(loopdev, p2, "ext4", MS_NOSUID | MS_NODEV | MS_NOATIME, "noinit_itable") < 0)
        die("mount %s", loopdev);
    close(dev); /* the mount holds the device; autoclear detaches it when the mount goes */

    char upper[4200], work[4200];
    snprintf(upper, sizeof upper, "%s/upper", p2);
    snprintf(work, sizeof work, "%s/work", p2);
    for (int i = 0; i < 2; i++) {
        const char *d = i ? work : upper;
        mkdir_p(d, 0755);
        if (chown(d, (uid_t)o->uid_base, (gid_t)o->uid_base) < 0) die("chown %s", d);
    }
    if (chown(p2, (uid_t)o->uid_base, (gid_t)o->uid_base) < 0) die("chown disk root");
    off += (size_t)snprintf(data + off, sizeof data - off, ",upperdir=%s,workdir=%s", upper, work);
    if (off >= sizeof data) { errno = 0; die("overlay options too long"); }

    snprintf(path, sizeof path, "%s/mnt/root", o->state_dir);
    mkdir_p(path, 0755);
    if (do_mount("overlay", path, "overlay", MS_NOSUID | MS_NODEV, data) < 0) die("mount overlay (%s)", data);
    close(userns);
}

/* ---------------------------------------------------------------- child: sandbox setup */

static void bind_dev(const char *root, const char *name) {
    char dst[4096], src[64];
    snprintf(src, sizeof src, "/dev/%s", name);
    snprintf(dst, sizeof dst, "%s/dev/%s", root, name);
    int fd = open(dst, O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
    if (fd < 0) die("create %s", dst);
    close(fd);
    if (do_mount(src, dst, NULL, MS_BIND, NULL) < 0) die("bind %s", src);
}

static void mount_dev(const char *root) {
    char p[4096];
    snprintf(p, sizeof p, "%s/dev", root);
    mkdir_p(p, 0755);
    if (do_mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=65536k") < 0) die("mount /dev");
    static const char *devs[] = {"null", "zero", "full", "random", "urandom", "tty"};
    for (size_t i = 0; i < sizeof devs / sizeof *devs; i++) bind_dev(root, devs[i]);
    snprintf(p, sizeof p, "%s/dev/pts", root);
    mkdir_p(p, 0755);
    if (do_mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") < 0)
        die("mount devpts");
    snprintf(p, sizeof p, "%s/dev/shm", root);
    mkdir_p(p, 01777);
    if (do_mount("shm", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k") < 0) die("mount /dev/shm");
    static const char *links[][2] = {{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
                                     {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}};
    for (size_t i = 0; i < sizeof links / sizeof *links; i++) {
        snprintf(p, sizeof p, "%s/dev/%s", root, links[i][1]);
        if (symlink(links[i][0], p) < 0) die("symlink %s", p);
    }
}

/* Paths of /proc that expose the host kernel; masked even though the user namespace already
 * denies writes to them, so a kernel bug in one of them is not reachable either. */
static void mask_proc(void) {
    static const char *masked[] = {"/proc/kcore", "/proc/sysrq-trigger", "/proc/timer_list", "/proc/kallsyms",
                                   "/proc/keys", "/proc/latency_stats", "/proc/sched_debug"};
    for (size_t i = 0; i < sizeof masked / sizeof *masked; i++) {
        if (access(masked[i], F_OK) == 0 && do_mount("/dev/null", masked[i], NULL, MS_BIND, NULL) < 0)
            die("mask %s", masked[i]);
    }
    static const char *ro[] = {"/proc/sys", "/proc/irq", "/proc/bus", "/proc/fs"};
    for (size_t i = 0; i < sizeof ro / sizeof *ro; i++) {
        if (access(ro[i], F_OK) != 0) continue;
        if (do_mount(ro[i], ro[i], NULL, MS_BIND | MS_REC, NULL) < 0) die("bind %s", ro[i]);
        if (do_mount(NULL, ro[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            die("remount ro %s", ro[i]);
    }
}

static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS lo");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS lo");
    close(s);
}

/* Capabilities sandbox root keeps inside its own user namespace (Docker's default set): enough
 * for package managers, not enough to mount, load BPF, change the clock or reach raw devices. */
static const int kept_caps[] = {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_KILL, CAP_SETGID,
                                CAP_SETUID, CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_NET_RAW, CAP_SYS_CHROOT,
                                CAP_MKNOD, CAP_AUDIT_WRITE, CAP_SETFCAP};

static void drop_bounding_set(void) {
    for (int c = 0; c <= CAP_LAST_CAP; c++) {
        int keep = 0;
        for (size_t i = 0; i < sizeof kept_caps / sizeof *kept_caps; i++) keep |= kept_caps[i] == c;
        if (!keep && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL) die("drop cap %d", c);
    }
}

/* Limit effective/permitted/inheritable to the kept set too (bounding only limits future execs). */
static void limit_caps(void) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    for (size_t i = 0; i < sizeof kept_caps / sizeof *kept_caps; i++) {
        int c = kept_caps[i];
        d[c / 32].effective |= 1u << (c % 32);
        d[c / 32].permitted |= 1u << (c % 32);
    }
    if (syscall(SYS_capset, &h, d) < 0) die("capset");
}

/* libseccomp cannot express "any of these bits set" directly; one rule per flag does. */
static void install_seccomp_filter(void) {
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) { errno = 0; die("seccomp_init"); }
    static const char *deny[] = {"init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
                                 "bpf", "perf_event_open", "add_key", "request_key", "keyctl", "reboot", "swapon",
                                 "swapoff", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
                                 "open_by_handle_at", "name_to_handle_at", "io_uring_setup", "io_uring_enter",
                                 "io_uring_register", "mount", "umount2", "pivot_root", "fsopen", "fsconfig",
                                 "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "setns",
                                 "unshare", "iopl", "ioperm", "acct", "syslog", "quotactl", "lookup_dcookie",
                                 "userfaultfd", "vhangup", "uselib", "nfsservctl", "_sysctl", "fanotify_init",
                                 "pidfd_getfd", "clone3"};
    for (size_t i = 0; i < sizeof deny / sizeof *deny; i++) {
        int nr = seccomp_syscall_resolve_name(deny[i]);
        if (nr == __NR_SCMP_ERROR) continue;
        /* clone3 gets ENOSYS so libc falls back to clone, whose flags seccomp can inspect */
        int err = strcmp(deny[i], "clone3") == 0 ? ENOSYS : EPERM;
        if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(err), nr, 0) < 0) { errno = 0; die("seccomp rule %s", deny[i]); }
    }
    static const uint64_t ns_flags[] = {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET,
                                        CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWCGROUP};
    for (size_t i = 0; i < sizeof ns_flags / sizeof *ns_flags; i++) {
        if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                             SCMP_A0(SCMP_CMP_MASKED_EQ, ns_flags[i], ns_flags[i])) < 0) {
            errno = 0;
            die("seccomp clone rule");
        }
    }
    if (seccomp_load(ctx) < 0) { errno = 0; die("seccomp_load"); }
    seccomp_release(ctx);
}

struct child_args {
    struct opts *o;
    int sync; /* socketpair end shared with the launcher */
    int listen_fd;
    char *argv_start; /* the launcher's argv area, blanked in PID 1 (it names host paths) */
    size_t argv_len;
};

__attribute__((noreturn)) static int serve(int listen_fd);

static int child_main(void *arg) {
    struct child_args *a = arg;
    struct opts *o = a->o;
    const char *root = "."; /* every path below is relative to the rootfs, our cwd */

    prctl(PR_SET_PDEATHSIG, SIGKILL); /* if the launcher dies before we are ready, so do we */
    clearenv(); /* nothing of the runner's environment reaches the sandbox */
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    umask(022);
    if (sync_read(a->sync) != 'M') _exit(1); /* uid maps written */
    if (setgid(0) < 0 || setuid(0) < 0) die("become sandbox root");
    if (setgroups(0, NULL) < 0) die("setgroups");
    if (do_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("make / private");
    sync_write(a->sync, 'P');
    int rootfd = recv_fd(a->sync, 'R'); /* rootfs mounted by the launcher */
    if (fchdir(rootfd) < 0) die("enter rootfs");
    close(rootfd);

    char p[4200];
    snprintf(p, sizeof p, "%s/proc", root);
    mkdir_p(p, 0555);
    if (do_mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) die("mount /proc");
    mount_dev(root);
    snprintf(p, sizeof p, "%s/sys", root);
    mkdir_p(p, 0555);
    if (do_mount("sysfs", p, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL) < 0) die("mount /sys");
    snprintf(p, sizeof p, "%s/tmp", root);
    mkdir_p(p, 01777);
    if (chmod(p, 01777) < 0) die("chmod /tmp");

    if (syscall(SYS_pivot_root, ".", ".") < 0) die("pivot_root");
    if (do_umount2(".", MNT_DETACH) < 0) die("detach old root");
    if (chdir("/") < 0) die("chdir /");
    mask_proc();

    if (sethostname(o->id, strlen(o->id)) < 0) die("sethostname");
    loopback_up();

    prctl(PR_SET_PDEATHSIG, 0);
    prctl(PR_SET_NAME, "hutch-init");
    /* ps inside the sandbox must not show the host's data dir, template dir or uid base */
    static char id[256];
    snprintf(id, sizeof id, "%s", o->id);
    o->id = id;
    memset(a->argv_start, 0, a->argv_len);
    snprintf(a->argv_start, a->argv_len, "hutch-init");
    drop_bounding_set();
    limit_caps();
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("no_new_privs");
    if (o->seccomp) install_seccomp_filter();
    /* PID 1 keeps nothing of the launcher's stdio: the runner waits for EOF on it. */
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0) die("open /dev/null");
    for (int i = 0; i < 3; i++) if (dup2(devnull, i) < 0) die("dup2 /dev/null");
    close(devnull);
    sync_write(a->sync, 'D');
    close(a->sync);
    return serve(a->listen_fd);
}

/* ---------------------------------------------------------------- init: control server */

struct proc {
    pid_t pid;
    int client; /* index of the client that spawned it, -1 when that client is gone */
};
static struct proc procs[MAX_PROCS];
static int nprocs;
static int clients[MAX_CLIENTS];
static char *msgbuf;

static void send_msg(int fd, const char *buf, size_t len, int pass_fd) {
    struct iovec iov = {(void *)buf, len};
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    if (pass_fd >= 0) {
        mh.msg_control = u.b;
        mh.msg_controllen = sizeof u.b;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    /* A runner that stopped reading must not block PID 1: drop the message instead. */
    (void)sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void reply(int fd, int pass_fd, const char *fmt, ...) {
    char out[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, sizeof out, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n >= sizeof out) n = sizeof out - 1;
    for (int i = 0; i < n; i++)
        if (out[i] == '\n') out[i] = '\0'; /* fields are written with '\n' and sent NUL-separated */
    send_msg(fd, out, (size_t)n, pass_fd);
}

struct spawn_req {
    const char *id, *cwd;
    uid_t uid;
    gid_t gid;
    int pty, cols, rows;
    char *argv[4096];
    int argc;
    char *envp[4096];
    int envc;
};

static void child_fail(int errpipe, int e, const char *what) {
    char b[256];
    int n = snprintf(b, sizeof b, "%d %s", e, what);
    if (write(errpipe, b, (size_t)n) < 0) { /* nothing left to report to */ }
    _exit(127);
}

/* In the forked child: become the requested user and exec. Errors go back through errpipe. */
static void exec_child(struct spawn_req *r, int fds[3], int pty_slave, int errpipe) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    setsid();
    int ofd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (ofd >= 0) { if (write(ofd, "0", 1) < 0) {} close(ofd); }
    if (pty_slave >= 0) {
        if (ioctl(pty_slave, TIOCSCTTY, 0) < 0) child_fail(errpipe, errno, "controlling tty");
        for (int i = 0; i < 3; i++) if (dup2(pty_slave, i) < 0) child_fail(errpipe, errno, "dup2");
        if (pty_slave > 2) close(pty_slave);
    } else {
        /* dup each fd above 2 first so that dup2 order cannot clobber one we still need */
        int tmp[3];
        for (int i = 0; i < 3; i++) {
            tmp[i] = fds[i] >= 0 ? fcntl(fds[i], F_DUPFD_CLOEXEC, 10) : open("/dev/null", O_RDWR | O_CLOEXEC);
            if (tmp[i] < 0) child_fail(errpipe, errno, "dup stdio");
        }
        for (int i = 0; i < 3; i++) if (dup2(tmp[i], i) < 0) child_fail(errpipe, errno, "dup2");
    }
    if (setgroups(0, NULL) < 0) child_fail(errpipe, errno, "setgroups");
    if (setresgid(r->gid, r->gid, r->gid) < 0) child_fail(errpipe, errno, "setgid");
    if (setresuid(r->uid, r->uid, r->uid) < 0) child_fail(errpipe, errno, "setuid");
    if (r->cwd && chdir(r->cwd) < 0) child_fail(errpipe, errno, "cwd");
    if (r->pty) {
        struct winsize ws = {(unsigned short)r->rows, (unsigned short)r->cols, 0, 0};
        ioctl(0, TIOCSWINSZ, &ws);
    }
    r->argv[r->argc] = NULL;
    r->envp[r->envc] = NULL;
    /* PATH lookup uses the command's own PATH */
    for (int i = 0; i < r->envc; i++)
        if (strncmp(r->envp[i], "PATH=", 5) == 0) setenv("PATH", r->envp[i] + 5, 1);
    execvpe(r->argv[0], r->argv, r->envp);
    child_fail(errpipe, errno, "exec");
}

static void handle_spawn(int ci, struct spawn_req *r, int fds[3]) {
    int fd = clients[ci];
    int master = -1, slave = -1;
    if (nprocs >= MAX_PROCS) { reply(fd, -1, "error\n%s\nerrno=%d\nmsg=too many processes", r->id, EAGAIN); return; }
    if (r->pty) {
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) {
            reply(fd, -1, "error\n%s\nerrno=%d\nmsg=cannot open a pty", r->id, errno);
            if (master >= 0) close(master);
            return;
        }
        slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (slave < 0) { reply(fd, -1, "error\n%s\nerrno=%d\nmsg=cannot open pty slave", r->id, errno); close(master); return; }
        /* the slave must survive exec; it is dup'ed onto 0..2 in the child */
    }
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0) { reply(fd, -1, "error\n%s\nerrno=%d\nmsg=pipe", r->id, errno); goto out; }
    pid_t pid = fork();
    if (pid < 0) {
        reply(fd, -1, "error\n%s\nerrno=%d\nmsg=fork failed", r->id, errno);
        close(ep[0]); close(ep[1]);
        goto out;
    }
    if (pid == 0) {
        close(ep[0]);
        if (master >= 0) close(master);
        exec_child(r, fds, slave, ep[1]);
    }
    close(ep[1]);
    char eb[256];
    ssize_t n = read(ep[0], eb, sizeof eb - 1); /* EOF means exec succeeded (CLOEXEC) */
    close(ep[0]);
    if (n > 0) {
        eb[n] = 0;
        int e = atoi(eb);
        const char *what = strchr(eb, ' ');
        waitpid(pid, NULL, 0);
        reply(fd, -1, "error\n%s\nerrno=%d\nmsg=%s: %s", r->id, e, what ? what + 1 : "exec", strerror(e));
        goto out;
    }
    procs[nprocs].pid = pid;
    procs[nprocs].client = ci;
    nprocs++;
    reply(fd, master, "spawned\n%s\npid=%d", r->id, pid);
out:
    if (master >= 0) close(master);
    if (slave >= 0) close(slave);
}

static void handle_message(int ci, char *buf, size_t len, int *fds, int nfds) {
    char *tok[8192];
    int nt = 0;
    size_t start = 0;
    for (size_t i = 0; i < len && nt < 8192; i++) {
        if (buf[i] == '\0') { tok[nt++] = buf + start; start = i + 1; }
    }
    int fd = clients[ci];
    if (nt < 2) return;
    if (strcmp(tok[0], "spawn") == 0) {
        struct spawn_req r;
        memset(&r, 0, sizeof r);
        r.id = tok[1];
        r.cols = 80;
        r.rows = 24;
        for (int i = 2; i < nt; i++) {
            char *t = tok[i];
            if (strncmp(t, "arg=", 4) == 0 && r.argc < 4095) r.argv[r.argc++] = t + 4;
            else if (strncmp(t, "env=", 4) == 0 && r.envc < 4095) r.envp[r.envc++] = t + 4;
            else if (strncmp(t, "uid=", 4) == 0) r.uid = (uid_t)strtoul(t + 4, NULL, 10);
            else if (strncmp(t, "gid=", 4) == 0) r.gid = (gid_t)strtoul(t + 4, NULL, 10);
            else if (strncmp(t, "cwd=", 4) == 0) r.cwd = t + 4;
            else if (strncmp(t, "pty=", 4) == 0) { r.pty = 1; sscanf(t + 4, "%dx%d", &r.cols, &r.rows); }
        }
        int sfds[3] = {-1, -1, -1};
        for (int i = 0; i < 3 && i < nfds; i++) sfds[i] = fds[i];
        if (r.argc == 0) reply(fd, -1, "error\n%s\nerrno=%d\nmsg=empty argv", r.id, EINVAL);
        else handle_spawn(ci, &r, sfds);
    } else if (strcmp(tok[0], "signal") == 0) {
        pid_t pid = 0;
        int sig = 0;
        for (int i = 2; i < nt; i++) {
            if (strncmp(tok[i], "pid=", 4) == 0) pid = atoi(tok[i] + 4);
            if (strncmp(tok[i], "sig=", 4) == 0) sig = atoi(tok[i] + 4);
        }
        int known = 0;
        for (int i = 0; i < nprocs; i++) known |= procs[i].pid == pid;
        if (!known || pid <= 1) { reply(fd, -1, "error\n%s\nerrno=%d\nmsg=no such process", tok[1], ESRCH); return; }
        /* the command leads its own session, so its process group holds what it started */
        kill(-pid, sig);
        kill(pid, sig);
        reply(fd, -1, "ok\n%s", tok[1]);
    }
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < nprocs; i++) {
            if (procs[i].pid != pid) continue;
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
            if (procs[i].client >= 0 && clients[procs[i].client] >= 0)
                reply(clients[procs[i].client], -1, "exit\n-\npid=%d\ncode=%d\nsignal=%d", pid, code, sig);
            procs[i] = procs[--nprocs];
            break;
        }
    }
}

__attribute__((noreturn)) static int serve(int listen_fd) {
    msgbuf = malloc(MAX_MSG);
    if (!msgbuf) die("malloc");
    for (int i = 0; i < MAX_CLIENTS; i++) clients[i] = -1;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGPIPE);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) die("signalfd");
    for (;;) {
        struct pollfd pf[MAX_CLIENTS + 2];
        int map[MAX_CLIENTS];
        int n = 0;
        pf[n].fd = sfd; pf[n++].events = POLLIN;
        pf[n].fd = listen_fd; pf[n++].events = POLLIN;
        int nc = 0;
        for (int i = 0; i < MAX_CLIENTS; i++)
            if (clients[i] >= 0) { map[nc++] = i; pf[n].fd = clients[i]; pf[n++].events = POLLIN; }
        if (poll(pf, (nfds_t)n, -1) < 0) { if (errno == EINTR) continue; die("poll"); }
        if (pf[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si) { /* SIGTERM to PID 1 is ignored: kill is SIGKILL */ }
            reap();
        }
        if (pf[1].revents & POLLIN) {
            int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) {
                int slot = -1;
                for (int i = 0; i < MAX_CLIENTS; i++) if (clients[i] < 0) { slot = i; break; }
                if (slot < 0) close(c);
                else clients[slot] = c;
            }
        }
        for (int k = 0; k < nc; k++) {
            struct pollfd *p = &pf[2 + k];
            int ci = map[k];
            if (!(p->revents & (POLLIN | POLLHUP | POLLERR))) continue;
            struct iovec iov = {msgbuf, MAX_MSG};
            union { char b[CMSG_SPACE(3 * sizeof(int))]; struct cmsghdr align; } u;
            struct msghdr mh;
            memset(&mh, 0, sizeof mh);
            mh.msg_iov = &iov;
            mh.msg_iovlen = 1;
            mh.msg_control = u.b;
            mh.msg_controllen = sizeof u.b;
            ssize_t len = recvmsg(clients[ci], &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
            if (len <= 0) {
                if (len < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                close(clients[ci]);
                clients[ci] = -1;
                for (int i = 0; i < nprocs; i++) if (procs[i].client == ci) procs[i].client = -1;
                continue;
            }
            int fds[3] = {-1, -1, -1}, nfds = 0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                    nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                    if (nfds > 3) nfds = 3;
                    memcpy(fds, CMSG_DATA(c), (size_t)nfds * sizeof(int));
                }
            }
            if (!(mh.msg_flags & MSG_TRUNC)) handle_message(ci, msgbuf, (size_t)len, fds, nfds);
            else reply(clients[ci], -1, "error\n-\nerrno=%d\nmsg=message too large", EMSGSIZE);
            for (int i = 0; i < nfds; i++) if (fds[i] >= 0) close(fds[i]);
        }
    }
}

/* ---------------------------------------------------------------- launcher main */

static void parse(int argc, char **argv, struct opts *o) {
    memset(o, 0, sizeof *o);
    o->seccomp = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--id")) o->id = v;
        else if (!strcmp(k, "--state-dir")) o->state_dir = v;
        else if (!strcmp(k, "--disk")) o->disk = v;
        else if (!strcmp(k, "--uid-base")) o->uid_base = strtoul(v, NULL, 10);
        else if (!strcmp(k, "--seccomp")) o->seccomp = atoi(v);
        else if (!strcmp(k, "--lower") && o->nlower < MAX_LOWER) o->lower[o->nlower++] = v;
        else if (!strcmp(k, "--cgroup-procs") && o->ncg < MAX_CG) o->cgroup_procs[o->ncg++] = v;
        else { errno = 0; die("unknown option %s", k); }
    }
    if (!o->id || !o->state_dir || !o->disk || !o->nlower || o->uid_base < 1000) {
        errno = 0;
        die("usage: --id ID --uid-base N --state-dir DIR --disk IMG --lower DIR [--cgroup-procs F]...");
    }
}

int main(int argc, char **argv) {
    struct opts o;
    parse(argc, argv, &o);

    char pidstr[32];
    snprintf(pidstr, sizeof pidstr, "%d", getpid());
    for (int i = 0; i < o.ncg; i++) write_file(o.cgroup_procs[i], pidstr);

    /* Bound by a relative name from inside the state dir: a unix socket path is limited to
     * 108 bytes and the state dir may be deeper than that. */
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0 || chdir(o.state_dir) < 0) die("enter %s", o.state_dir);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, "ctl.sock");
    int lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    unlink("ctl.sock");
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind ctl.sock");
    if (chmod("ctl.sock", 0600) < 0) die("chmod socket");
    if (fchdir(cwd) < 0) die("fchdir");
    close(cwd);
    if (listen(lfd, 16) < 0) die("listen");

    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) die("socketpair");
    struct child_args ca = {&o, sp[1], lfd, argv[0], 0};
    ca.argv_len = (size_t)(argv[argc - 1] + strlen(argv[argc - 1]) - argv[0]);
    size_t stack_size = 256 * 1024;
    char *stack = malloc(stack_size);
    if (!stack) die("malloc");
    int flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                CLONE_NEWCGROUP | SIGCHLD;
    pid_t child = clone(child_main, stack + stack_size, flags, &ca);
    if (child < 0) die("clone");
    close(sp[1]);
    close(lfd);

    char path[128], map[128];
    snprintf(map, sizeof map, "0 %lu 65536\n", o.uid_base);
    snprintf(path, sizeof path, "/proc/%d/uid_map", child);
    write_file(path, map);
    snprintf(path, sizeof path, "/proc/%d/gid_map", child);
    write_file(path, map);
    /* PID 1 should outlive a memory bomb; commands it starts reset this to 0. Best effort: it
     * needs CAP_SYS_RESOURCE, and without it the OOM killer still picks the (much larger) bomb. */
    snprintf(path, sizeof path, "/proc/%d/oom_score_adj", child);
    int ofd = open(path, O_WRONLY | O_CLOEXEC);
    if (ofd >= 0) { if (write(ofd, "-1000", 5) < 0) { /* see above */ } close(ofd); }
    sync_write(sp[0], 'M');
    if (sync_read(sp[0]) != 'P') _exit(1);
    build_rootfs(&o, child);
    char rootpath[4200];
    snprintf(rootpath, sizeof rootpath, "%s/mnt/root", o.state_dir);
    int rootfd = open(rootpath, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) die("open %s", rootpath);
    send_fd(sp[0], 'R', rootfd);
    close(rootfd);
    if (sync_read(sp[0]) != 'D') _exit(1);
    /* PID 1 and the loop device (without /dev/): the runner waits for that one to detach */
    printf("%d %s\n", child, o.loopdev + 5);
    fflush(stdout);
    return 0;
}
