/* A node's wall clock, stepped: LD_PRELOAD'ed into a local cloud node's agent (localcloud/cloud.py
 * `step_clock`, decision 0035). CLOCK_REALTIME (and its coarse and TAI kin), gettimeofday() and
 * time() return the real time plus the whole seconds written in the file named by
 * HYOPS_CLOCK_FILE (e.g. "300" or "-300"), re-read at most every 0.2 s of real monotonic time, so
 * a step takes effect while the process runs. CLOCK_MONOTONIC, CLOCK_BOOTTIME and every sleep
 * and wait are left alone: a stepped wall clock does not step the monotonic one, exactly as
 * `date -s` on a machine would not. (libfaketime 0.9.10, Debian 12's, breaks Python 3.11's
 * time.sleep when told not to fake the monotonic clock: its issue #426.) Go programs (dockerd)
 * read the clock through the vDSO, not libc, and are not affected. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static _Atomic long offset_s;
static _Atomic long long checked_ns = -1000000000LL;

static long long mono_ns(void) {
  struct timespec ts;
  syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long offset(void) {
  long long now = mono_ns();
  if (now - atomic_load(&checked_ns) >= 200000000LL) {
    atomic_store(&checked_ns, now);
    const char *path = getenv("HYOPS_CLOCK_FILE");
    if (path) {
      char buf[32] = {0};
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) atomic_store(&offset_s, strtol(buf, NULL, 10));
      }
    }
  }
  return atomic_load(&offset_s);
}

static int real_clock(clockid_t id, struct timespec *ts) {
  return (int)syscall(SYS_clock_gettime, id, ts);
}

int clock_gettime(clockid_t id, struct timespec *ts) {
  static int (*next)(clockid_t, struct timespec *);
  if (!next) next = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
  int rc = next ? next(id, ts) : real_clock(id, ts);
  if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE || id == CLOCK_TAI))
    ts->tv_sec += offset();
  return rc;
}

#pragma GCC diagnostic ignored "-Wnonnull-compare"
int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
  struct timespec ts;
  if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
  if (tv) {
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
  }
  if (tz) {
    struct timezone *z = tz;
    z->tz_minuteswest = 0;
    z->tz_dsttime = 0;
  }
  return 0;
}

time_t time(time_t *out) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (out) *out = ts.tv_sec;
  return ts.tv_sec;
}
