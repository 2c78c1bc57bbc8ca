/* sseload: the benchmark's SSE streams in C (issue 13).
 *
 * One thread, epoll, non-blocking sockets: N streams to 127.0.0.1:PORT, each a
 * GET of an SSE path over HTTP/1.1. The response head, the chunked transfer
 * coding (or an identity body) and the SSE frames are parsed incrementally; a
 * `data:` line holding a benchmark payload `<seq>:<topic>:<unix time>`
 * (optionally JSON-quoted) is a delivery, its latency is now - time
 * (CLOCK_REALTIME: Python's time.time()). Same rules as benchmarks/loadgen.py:
 * the SSE text of a stream is handled in blocks of complete frames (up to its
 * last blank line); a stream counts as primed once a block of it contained
 * `prime`, and deliveries before that are ignored; every stream counts each
 * sequence number it received (lost / duplicated), out-of-order and
 * wrong-topic deliveries are counted per group.
 *
 * Driven by lines on stdin, one JSON line answered on stdout per command:
 *   add PORT TOPIC COUNT PATH   queue COUNT streams of TOPIC (no answer)
 *   connect CONCURRENCY TIMEOUT open the queued streams, at most CONCURRENCY
 *                               connects in flight; answers once each is
 *                               settled (head received, failed, or 0.2 s after
 *                               its TCP connect) or TIMEOUT s passed
 *   reset                       forget what was received (next phase)
 *   count                       cheap counters, for polling
 *   stats [PATH]                every figure; PATH gets the latencies (doubles)
 *   close                       abort every stream (RST)
 *   quit
 * Build: gcc -O2 -o sseload sseload.c     Usage: sseload N_MESSAGES [spin]
 * (spin: never sleep in epoll_wait; the CPU it is on never idles).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { HEADERS, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, IDENTITY, DONE };
enum { QUEUED, CONNECTING, WAITING, SETTLED };

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

typedef struct {
    int fd, topic, port, path;
    int state, phase, connected, primed, http_status;
    double connected_at;
    size_t remaining;
    long last_seq;
    buf_t head, line, sse;
    uint8_t *counts;
} stream_t;

static stream_t *streams;
static size_t n_streams, cap_streams, next_queued;
static char **paths;
static size_t n_paths;
static long n_messages;
static int ep;
static long ok, failed, closed_, primed, deliveries, wrong_topic, out_of_order;
static long long bytes_in;
static double first_at, last_at;
static double *lat;
/* The load generator's own work since the last reset: epoll wake-ups with
 * events, successful reads, and how long each wake-up's batch took (an event
 * waits in here at most the batch before it was read plus its own). */
static long n_reads;
static double *batch;
static size_t n_batch, cap_batch;
static struct rusage ru0;
static double busy_s, reset_at;
/* spin: poll epoll without sleeping, so this CPU never idles and the server
 * never has to wake it (no wake-up IPIs charged to the server). */
static int spin;
static size_t n_lat, cap_lat;
static int in_flight;
static char rbuf[1 << 16];

static double now_real(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "sseload: out of memory\n");
        exit(2);
    }
    return q;
}

static void buf_add(buf_t *b, const char *p, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 256;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void buf_free(buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static void settle(stream_t *s) {
    if (s->phase == CONNECTING || s->phase == WAITING)
        in_flight--;
    s->phase = SETTLED;
}

/* The connection ended (by the peer, an error, or us). */
static void finish(stream_t *s, int count_closed) {
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
        if (count_closed && s->connected)
            closed_++;
    }
    s->state = DONE;
    settle(s);
    buf_free(&s->head);
    buf_free(&s->line);
    buf_free(&s->sse);
}

static long parse_uint(const char **pp, const char *end) {
    const char *p = *pp;
    long v = 0;
    if (p >= end || *p < '0' || *p > '9')
        return -1;
    while (p < end && *p >= '0' && *p <= '9') {
        v = v * 10 + (*p - '0');
        p++;
    }
    *pp = p;
    return v;
}

/* loadgen._PAYLOAD: rb'data: ?"?(\d+):(\d+):(\d+\.\d+)' found anywhere. */
static void frames(stream_t *s, const char *block, size_t n, double now) {
    if (!s->primed) {
        if (!memmem(block, n, "prime", 5))
            return;
        s->primed = 1;
        primed++;
    }
    const char *end = block + n, *p = block;
    long found = 0, matched = 0;
    while ((p = memmem(p, end - p, "data:", 5)) != NULL) {
        const char *q = p + 5;
        p++;
        if (q < end && *q == ' ')
            q++;
        if (q < end && *q == '"')
            q++;
        long seq = parse_uint(&q, end);
        if (seq < 0 || q >= end || *q != ':')
            continue;
        q++;
        long topic = parse_uint(&q, end);
        if (topic < 0 || q >= end || *q != ':')
            continue;
        q++;
        const char *ts0 = q;
        if (parse_uint(&q, end) < 0 || q >= end || *q != '.')
            continue;
        q++;
        if (parse_uint(&q, end) < 0)
            continue;
        p = q;
        matched++;
        char tmp[64];
        size_t tl = (size_t)(q - ts0) < sizeof tmp - 1 ? (size_t)(q - ts0) : sizeof tmp - 1;
        memcpy(tmp, ts0, tl);
        tmp[tl] = 0;
        if (topic != s->topic || seq >= n_messages) {
            wrong_topic++;
            continue;
        }
        if (s->counts[seq] < 255)
            s->counts[seq]++;
        if (seq <= s->last_seq)
            out_of_order++;
        s->last_seq = seq;
        if (n_lat == cap_lat) {
            cap_lat = cap_lat * 2 + 65536;
            lat = xrealloc(lat, cap_lat * sizeof *lat);
        }
        lat[n_lat++] = now - strtod(tmp, NULL);
        found++;
    }
    if (!matched)
        return;
    deliveries += found;
    if (first_at == 0.0)
        first_at = now;
    last_at = now;
}

/* New body bytes: SSE text up to its last blank line is handled as a block. */
static void body(stream_t *s, const char *p, size_t n, double now) {
    buf_t *b = &s->sse;
    buf_add(b, p, n);
    if (memchr(b->p, '\r', b->len)) { /* "\r\n" -> "\n", like the Python */
        size_t w = 0;
        for (size_t r = 0; r < b->len; r++) {
            if (b->p[r] == '\r' && r + 1 < b->len && b->p[r + 1] == '\n')
                continue;
            b->p[w++] = b->p[r];
        }
        b->len = w;
    }
    size_t end = b->len;
    while (end >= 2 && !(b->p[end - 1] == '\n' && b->p[end - 2] == '\n'))
        end--;
    if (end < 2)
        return;
    frames(s, b->p, end - 2, now);
    memmove(b->p, b->p + end, b->len - end);
    b->len -= end;
}

static int has_chunked(const char *h, size_t n) {
    for (size_t i = 0; i + 26 <= n; i++)
        if (strncasecmp(h + i, "transfer-encoding: chunked", 26) == 0)
            return 1;
    return 0;
}

static void received(stream_t *s, const char *p, size_t n, double now) {
    bytes_in += n;
    const char *end = p + n;
    if (s->state == HEADERS) {
        size_t old = s->head.len;
        buf_add(&s->head, p, n);
        char *e = memmem(s->head.p + (old > 3 ? old - 3 : 0), s->head.len - (old > 3 ? old - 3 : 0),
                         "\r\n\r\n", 4);
        if (!e)
            return;
        size_t hl = e - s->head.p;
        p = p + (hl + 4 - old);
        s->http_status = hl >= 12 ? atoi(s->head.p + 9) : 0;
        if (s->http_status != 200) {
            failed++;
            finish(s, 1);
            return;
        }
        ok++;
        settle(s);
        s->state = has_chunked(s->head.p, hl) ? CHUNK_SIZE : IDENTITY;
        buf_free(&s->head);
    }
    if (s->state == IDENTITY) {
        if (end > p)
            body(s, p, end - p, now);
        return;
    }
    /* Dechunk into rbuf-sized pieces handed to body() in one go per read. */
    static char out[1 << 16];
    size_t on = 0;
    while (p < end && s->state != DONE) {
        if (s->state == CHUNK_DATA) {
            size_t take = (size_t)(end - p) < s->remaining ? (size_t)(end - p) : s->remaining;
            memcpy(out + on, p, take);
            on += take;
            p += take;
            s->remaining -= take;
            if (!s->remaining)
                s->state = CHUNK_CRLF;
        } else if (s->state == CHUNK_CRLF) {
            /* two bytes, possibly split over reads: count them in remaining */
            p++;
            if (++s->remaining == 2) {
                s->remaining = 0;
                s->state = CHUNK_SIZE;
            }
        } else { /* CHUNK_SIZE: a line up to \r\n */
            const char *nl = memchr(p, '\n', end - p);
            if (!nl) {
                buf_add(&s->line, p, end - p);
                break;
            }
            buf_add(&s->line, p, nl + 1 - p);
            p = nl + 1;
            buf_add(&s->line, "", 1);
            s->remaining = strtoul(s->line.p, NULL, 16);
            s->line.len = 0;
            s->state = s->remaining ? CHUNK_DATA : DONE;
        }
    }
    if (on)
        body(s, out, on, now);
}

static void start_connect(size_t i) {
    stream_t *s = &streams[i];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(s->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        failed++;
        s->state = DONE;
        s->phase = SETTLED;
        return;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    in_flight++;
    s->phase = CONNECTING;
    if (connect(s->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        failed++;
        finish(s, 0);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u64 = i};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
}

static void connected(size_t i) {
    stream_t *s = &streams[i];
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        failed++;
        finish(s, 0);
        return;
    }
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                     "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
                     paths[s->path], s->port);
    s->connected = 1;
    s->connected_at = now_mono();
    s->phase = WAITING;
    if (write(s->fd, req, n) != n) {
        failed++;
        finish(s, 1);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}

static void readable(size_t i) {
    stream_t *s = &streams[i];
    for (;;) {
        ssize_t n = read(s->fd, rbuf, sizeof rbuf);
        if (n > 0) {
            n_reads++;
            received(s, rbuf, n, now_real());
            if (s->fd < 0)
                return;
            if ((size_t)n < sizeof rbuf)
                return;
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            finish(s, 1);
            return;
        } else if (errno == EAGAIN) {
            return;
        }
    }
}

/* Poll once (up to timeout_ms), handling socket events; 1 if stdin is readable. */
static int poll_once(int timeout_ms) {
    struct epoll_event evs[512];
    int n = epoll_wait(ep, evs, 512, timeout_ms), input = 0;
    double t0 = n > 0 ? now_mono() : 0.0;
    for (int k = 0; k < n; k++) {
        if (evs[k].data.u64 == UINT64_MAX) {
            input = 1;
            continue;
        }
        size_t i = evs[k].data.u64;
        stream_t *s = &streams[i];
        if (s->fd < 0)
            continue;
        if (s->phase == CONNECTING) {
            if (evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                connected(i);
            continue;
        }
        readable(i);
    }
    if (n > 0) {
        if (n_batch == cap_batch) {
            cap_batch = cap_batch * 2 + 4096;
            batch = xrealloc(batch, cap_batch * sizeof *batch);
        }
        batch[n_batch] = now_mono() - t0;
        busy_s += batch[n_batch++];
    }
    return input;
}

static void do_connect(int concurrency, double timeout) {
    double deadline = now_mono() + timeout;
    for (;;) {
        while (next_queued < n_streams && in_flight < concurrency) {
            if (now_mono() >= deadline) {
                failed++;
                streams[next_queued].state = DONE;
                streams[next_queued].phase = SETTLED;
            } else {
                start_connect(next_queued);
            }
            next_queued++;
        }
        double now = now_mono();
        int unsettled = 0;
        for (size_t i = 0; i < n_streams; i++) {
            stream_t *s = &streams[i];
            /* Heads may come with the first event only (flask-sse): priming
             * settles that, so a connected stream waits 0.2 s at most. */
            if (s->phase == WAITING && now - s->connected_at >= 0.2)
                settle(s);
            if (s->phase == CONNECTING && now >= deadline)
                finish(s, 0); /* a connect timing out is not a failure (as in Python) */
            if (s->phase != SETTLED)
                unsettled++;
        }
        if (!unsettled && next_queued == n_streams)
            break;
        poll_once(10);
    }
    printf("{\"ok\":%ld,\"failed\":%ld}\n", ok, failed);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static void print_count(void) {
    long live = 0;
    printf("{\"deliveries\":%ld,\"primed\":%ld,\"ok\":%ld,\"failed\":%ld,\"closed\":%ld,"
           "\"first_at\":%.6f,\"last_at\":%.6f,\"unprimed_topics\":[",
           deliveries, primed, ok, failed, closed_, first_at, last_at);
    /* topics of live streams not primed yet (sorted, distinct) */
    int *tops = NULL;
    size_t nt = 0;
    for (size_t i = 0; i < n_streams; i++) {
        stream_t *s = &streams[i];
        if (s->state == DONE || !s->connected)
            continue;
        live++;
        if (!s->primed) {
            tops = xrealloc(tops, (nt + 1) * sizeof *tops);
            tops[nt++] = s->topic;
        }
    }
    qsort(tops, nt, sizeof *tops, cmp_int);
    for (size_t a = 0; a < nt; a++)
        if (!a || tops[a] != tops[a - 1])
            printf(a ? ",%d" : "%d", tops[a]);
    free(tops);
    printf("],\"live\":%ld}\n", live);
}

static void print_stats(const char *path) {
    long long received_ = 0, total = 0;
    for (size_t i = 0; i < n_streams; i++) {
        stream_t *s = &streams[i];
        if (!s->primed)
            continue;
        for (long q = 0; q < n_messages; q++) {
            received_ += s->counts[q] != 0;
            total += s->counts[q];
        }
    }
    if (path && *path) {
        FILE *f = fopen(path, "wb");
        if (f) {
            fwrite(lat, sizeof *lat, n_lat, f);
            fclose(f);
        }
    }
    double *sorted = xrealloc(NULL, n_lat * sizeof *sorted);
    memcpy(sorted, lat, n_lat * sizeof *sorted);
    qsort(sorted, n_lat, sizeof *sorted, cmp_double);
#define PCT(q) (n_lat ? sorted[(size_t)(q * n_lat) < n_lat ? (size_t)(q * n_lat) : n_lat - 1] : -1.0)
    printf("{\"deliveries\":%ld,\"primed\":%ld,\"ok\":%ld,\"failed\":%ld,\"closed\":%ld,"
           "\"first_at\":%.6f,\"last_at\":%.6f,\"bytes\":%lld,\"wrong_topic\":%ld,"
           "\"out_of_order\":%ld,\"received\":%lld,\"total\":%lld,\"latencies\":%zu,"
           "\"p50\":%.6f,\"p99\":%.6f,\"max\":%.6f,",
           deliveries, primed, ok, failed, closed_, first_at, last_at, bytes_in, wrong_topic,
           out_of_order, received_, total, n_lat, PCT(0.50), PCT(0.99),
           n_lat ? sorted[n_lat - 1] : -1.0);
    free(sorted);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    qsort(batch, n_batch, sizeof *batch, cmp_double);
#define TV(tv) ((tv).tv_sec + (tv).tv_usec * 1e-6)
#define BP(q) (n_batch ? batch[(size_t)(q * n_batch) < n_batch ? (size_t)(q * n_batch) : n_batch - 1] : 0.0)
    printf("\"reads\":%ld,\"wakeups\":%zu,\"batch_p50\":%.6f,\"batch_p99\":%.6f,"
           "\"batch_max\":%.6f,\"user_s\":%.6f,\"sys_s\":%.6f,\"voluntary_switches\":%ld,"
           "\"involuntary_switches\":%ld,\"busy_s\":%.6f,\"since_reset_s\":%.6f}\n",
           n_reads, n_batch, BP(0.50), BP(0.99), BP(1.0), TV(ru.ru_utime) - TV(ru0.ru_utime),
           TV(ru.ru_stime) - TV(ru0.ru_stime), ru.ru_nvcsw - ru0.ru_nvcsw, ru.ru_nivcsw - ru0.ru_nivcsw, busy_s,
           now_mono() - reset_at);
}

static void reset(void) {
    deliveries = wrong_topic = out_of_order = 0;
    bytes_in = 0;
    first_at = last_at = 0.0;
    n_lat = 0;
    n_reads = 0;
    n_batch = 0;
    busy_s = 0.0;
    reset_at = now_mono();
    getrusage(RUSAGE_SELF, &ru0);
    for (size_t i = 0; i < n_streams; i++) {
        memset(streams[i].counts, 0, n_messages);
        streams[i].last_seq = -1;
    }
    printf("{\"reset\":true}\n");
}

static void close_all(void) {
    long n = 0;
    for (size_t i = 0; i < n_streams; i++) {
        stream_t *s = &streams[i];
        if (s->fd < 0)
            continue;
        struct linger lg = {1, 0}; /* abort: RST, like transport.abort() */
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        finish(s, 1);
        n++;
    }
    printf("{\"aborted\":%ld}\n", n);
}

static void add(int port, int topic, long count, const char *path) {
    if (n_paths == 0 || strcmp(paths[n_paths - 1], path) != 0) {
        paths = xrealloc(paths, (n_paths + 1) * sizeof *paths);
        paths[n_paths++] = strdup(path);
    }
    if (n_streams + count > cap_streams) {
        cap_streams = (n_streams + count) * 2;
        streams = xrealloc(streams, cap_streams * sizeof *streams);
    }
    for (long k = 0; k < count; k++) {
        stream_t *s = &streams[n_streams++];
        memset(s, 0, sizeof *s);
        s->fd = -1;
        s->topic = topic;
        s->port = port;
        s->path = (int)n_paths - 1;
        s->last_seq = -1;
        s->counts = calloc(n_messages ? n_messages : 1, 1);
    }
}

/* One command line; 0 on quit. */
static int command(char *line) {
    char *nl = strchr(line, '\n');
    if (nl)
        *nl = 0;
    int port, topic, conc;
    long count;
    double timeout;
    char path[2048];
    if (sscanf(line, "add %d %d %ld %2047s", &port, &topic, &count, path) == 4)
        add(port, topic, count, path);
    else if (sscanf(line, "connect %d %lf", &conc, &timeout) == 2)
        do_connect(conc, timeout);
    else if (strcmp(line, "reset") == 0)
        reset();
    else if (strcmp(line, "count") == 0)
        print_count();
    else if (strncmp(line, "stats", 5) == 0)
        print_stats(line[5] == ' ' ? line + 6 : NULL);
    else if (strcmp(line, "close") == 0)
        close_all();
    else if (strcmp(line, "quit") == 0)
        return 0;
    else
        printf("{\"error\":\"unknown command\"}\n");
    fflush(stdout);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "spin") != 0)) {
        fprintf(stderr, "usage: sseload N_MESSAGES [spin]\n");
        return 2;
    }
    n_messages = atol(argv[1]);
    spin = argc == 3;
    reset_at = now_mono();
    ep = epoll_create1(EPOLL_CLOEXEC);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    buf_t in = {0};
    for (;;) {
        if (!poll_once(spin ? 0 : -1))
            continue;
        for (;;) {
            char tmp[8192];
            ssize_t n = read(0, tmp, sizeof tmp);
            if (n == 0)
                return 0; /* stdin closed: the benchmark went away */
            if (n < 0)
                break;
            buf_add(&in, tmp, n);
        }
        char *nl;
        while ((nl = memchr(in.p, '\n', in.len)) != NULL) {
            *nl = 0;
            if (!command(in.p))
                return 0;
            size_t used = nl + 1 - in.p;
            memmove(in.p, in.p + used, in.len - used);
            in.len -= used;
        }
    }
}
