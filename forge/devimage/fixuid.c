/*
 * forge-fixuid: make the forge dev image's user have the uid and gid the container runs as.
 *
 * The image is built for one uid and gid (`forge build` uses yours). When a container is
 * started with another one (`docker run -u UID:GID`), the entrypoint runs this helper, which
 * is installed setuid root. It does one thing: in /etc/passwd and /etc/group, the dev user
 * (named in the root-owned /etc/forge-dev/user) and its own group get the caller's real
 * uid and gid, and the files under the user's home and /var/lib/forge-dev/sshd that belonged
 * to the old ids are handed to the new ones. It is what fixuid does, compiled from this file
 * at image build time instead of downloaded.
 *
 * Limits, on purpose:
 * - it changes nothing when the ids already match;
 * - it acts at most once per container (a marker under /var/lib/forge-dev/fixuid): the
 *   first process to run it, the entrypoint, decides who the dev user is;
 * - it refuses the caller uid 0, and a uid that belongs to another user of the image;
 * - it reads no environment variable and runs no other program.
 * The dev user has passwordless sudo in its own container anyway, so the helper gives no one
 * more than what the container's user already has (docs/security.md).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define USER_FILE "/etc/forge-dev/user"
#define MARKER_DIR "/var/lib/forge-dev/fixuid"
#define MARKER MARKER_DIR "/done"
#define SSHD_DIR "/var/lib/forge-dev/sshd"

static uid_t old_uid, new_uid;
static gid_t old_gid, new_gid;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("forge-fixuid: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* The dev user's name, from a file only root can have written. */
static void read_user(char *name, size_t size) {
    int fd = open(USER_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) die("cannot open %s: %s", USER_FILE, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022))
        die("%s must be a regular file owned by root and writable only by root", USER_FILE);
    ssize_t n = read(fd, name, size - 1);
    close(fd);
    if (n <= 0) die("%s is empty", USER_FILE);
    name[n] = '\0';
    name[strcspn(name, "\n")] = '\0';
    if (!name[0]) die("%s is empty", USER_FILE);
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-'))
            die("%s: not a plain user name", USER_FILE);
}

/* Rewrite one colon-separated file (passwd or group): in the line whose first field is
 * `name`, set field `idx` (0-based) to `value`. Atomic: a temporary file, then rename. */
static void rewrite(const char *path, const char *name, int idx, unsigned long value) {
    FILE *in = fopen(path, "re");
    if (!in) die("cannot read %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(in), &st) != 0) die("cannot stat %s: %s", path, strerror(errno));
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s.forge-fixuid", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) die("cannot write %s: %s", tmp, strerror(errno));
    FILE *out = fdopen(fd, "w");
    if (!out) die("fdopen: %s", strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    size_t name_len = strlen(name);
    int found = 0;
    while ((len = getline(&line, &cap, in)) >= 0) {
        if (!found && strncmp(line, name, name_len) == 0 && line[name_len] == ':') {
            found = 1;
            /* Copy fields, replacing field idx. */
            char *p = line;
            for (int field = 0; *p; field++) {
                char *end = strchr(p, ':');
                char *stop = end ? end : p + strcspn(p, "\n");
                if (field == idx) fprintf(out, "%lu", value);
                else fwrite(p, 1, (size_t)(stop - p), out);
                if (!end) {
                    fputs(stop, out); /* the newline, if any */
                    break;
                }
                fputc(':', out);
                p = end + 1;
            }
        } else {
            fwrite(line, 1, (size_t)len, out);
        }
    }
    free(line);
    fclose(in);
    if (!found) {
        fclose(out);
        unlink(tmp);
        die("%s has no entry for %s", path, name);
    }
    if (fflush(out) != 0 || fchown(fd, st.st_uid, st.st_gid) != 0 || fchmod(fd, st.st_mode & 07777) != 0 ||
        fsync(fd) != 0)
        die("cannot write %s: %s", tmp, strerror(errno));
    fclose(out);
    if (rename(tmp, path) != 0) die("cannot replace %s: %s", path, strerror(errno));
}

static int chown_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)type;
    (void)ftw;
    uid_t u = st->st_uid == old_uid ? new_uid : (uid_t)-1;
    gid_t g = st->st_gid == old_gid ? new_gid : (gid_t)-1;
    if (u != (uid_t)-1 || g != (gid_t)-1) {
        if (lchown(path, u, g) != 0) fprintf(stderr, "forge-fixuid: %s: %s\n", path, strerror(errno));
    }
    return 0;
}

int main(void) {
    if (geteuid() != 0) die("not installed setuid root");
    new_uid = getuid();
    gid_t caller_gid = getgid();
    if (new_uid == 0) die("run as the container's user, not root");

    char name[64];
    read_user(name, sizeof name);
    struct passwd *pw = getpwnam(name);
    if (!pw) die("no user %s in /etc/passwd", name);
    old_uid = pw->pw_uid;
    old_gid = pw->pw_gid;
    char home[4096];
    snprintf(home, sizeof home, "%s", pw->pw_dir);
    /* gid 0 means `-u UID` without a group: keep the user's own group. */
    new_gid = caller_gid == 0 ? old_gid : caller_gid;
    if (new_uid == old_uid && new_gid == old_gid) return 0;

    if (access(MARKER, F_OK) == 0)
        die("the ids of %s were already changed once in this container; not again", name);
    struct passwd *taken = getpwuid(new_uid);
    if (taken && strcmp(taken->pw_name, name) != 0)
        die("uid %lu belongs to user %s in this image; start the container with another uid",
            (unsigned long)new_uid, taken->pw_name);

    int marker = open(MARKER, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (marker < 0) die("cannot create %s: %s", MARKER, strerror(errno));
    dprintf(marker, "%s %lu:%lu -> %lu:%lu\n", name, (unsigned long)old_uid, (unsigned long)old_gid,
            (unsigned long)new_uid, (unsigned long)new_gid);
    close(marker);

    if (new_uid != old_uid) rewrite("/etc/passwd", name, 2, new_uid);
    if (new_gid != old_gid) {
        rewrite("/etc/passwd", name, 3, new_gid);
        /* The user's own group follows, unless the new gid is already another group's. */
        struct group *own = getgrgid(old_gid);
        int own_is_users = own && strcmp(own->gr_name, name) == 0;
        if (own_is_users && !getgrgid(new_gid)) rewrite("/etc/group", name, 2, new_gid);
    }

    nftw(home, chown_entry, 32, FTW_PHYS | FTW_MOUNT);
    nftw(SSHD_DIR, chown_entry, 8, FTW_PHYS | FTW_MOUNT);
    fprintf(stderr, "forge-fixuid: %s is now %lu:%lu (was %lu:%lu)\n", name, (unsigned long)new_uid,
            (unsigned long)new_gid, (unsigned long)old_uid, (unsigned long)old_gid);
    return 0;
}
