/* The userspace tunnel's per-packet loop, compiled.
 *
 * Python keeps the control plane (which inner address goes to which outer
 * address, who may send what); this module only moves packets between a TUN
 * device and the tunnel sockets, in batches: one read per packet from TUN
 * (TUN has no batched read without offloads), one sendmmsg per batch towards
 * the peers, one recvmmsg per batch from the raw IP-in-IP socket (or the raw
 * GRE one), one write per packet into TUN.  The pure-Python engine in ipip.py has the same
 * interface and semantics; tests run both.
 *
 * Tables map a 4-byte key taken from the inner packet (its source or its
 * destination address) to an outer IPv4 address (and a UDP port for RFC 3519
 * bindings, 0 for IP-in-IP or GRE) and the encapsulation: IP-in-IP (RFC 2003)
 * or GRE (RFC 2784, RFC 5944 3.3's G bit).  Open addressing, linear probing, tombstones.
 * All calls come from the event loop's thread with the GIL held, so the
 * tables need no lock.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <limits.h>
#include <unistd.h>

#define BATCH 64      /* TUN reads, or raw receives, per batch */
#define VNET 10       /* struct virtio_net_hdr, before each packet on an IFF_VNET_HDR TUN */
#define BUFSZ 65600   /* a virtio header and an IPv4 packet of up to 65535 bytes */
#define MAXOUT 512    /* tunnel packets queued per sendmmsg */
#define MAXAGG 64     /* segments merged into one TUN write */
#define RAW_ROUNDS 4  /* recvmmsg batches per wake-up, then yield to the loop */
#define HDRMAX 120    /* IPv4 + TCP headers, options included */
#define FLUSH_BYTES (512 * 1024) /* queued TUN reads flushed beyond this: the buffers
                                  * that ever hold 64 KiB aggregates stay few (RSS) */

/* virtio_net_hdr fields (native byte order on a legacy TUN). */
#define F_NEEDS_CSUM 1
#define F_DATA_VALID 2
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_UDP_L4 5
#define GSO_ECN 0x80

#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80

static const unsigned char TUNNEL_DATA_HEADER[4] = {4, 4, 0, 0}; /* RFC 3519 */
/* RFC 2784: no checksum (C clear), reserved and version 0, protocol type IPv4. */
static const unsigned char GRE_HEADER[4] = {0, 0, 0x08, 0x00};
#define GRE_C 0x80          /* checksum present: Checksum and Reserved1 follow */
#define GRE_RFC1701 0x7C    /* bits 1-5: a receiver without RFC 1701 discards */
#define GRE_VERSION 0x07
#define ETH_P_IPV4 0x0800

enum { EMPTY = 0, USED = 1, DELETED = 2 };

typedef struct {
    uint32_t key;  /* network byte order, as in the packet */
    uint32_t addr; /* network byte order */
    uint16_t port; /* host byte order; 0 = IP-in-IP or GRE */
    uint8_t state;
    uint8_t gre;   /* 1: GRE, 0: IP-in-IP (or RFC 3519 UDP with a port) */
} Entry;

typedef struct {
    Entry *slots;
    size_t cap;    /* power of two, or 0 */
    size_t used;   /* USED slots */
    size_t filled; /* USED + DELETED slots */
    int has_default;
    Entry dflt;
} Table;

static size_t slot_of(uint32_t key, size_t cap) {
    uint32_t h = key * 0x9E3779B1u;
    h ^= h >> 16;
    return h & (cap - 1);
}

static const Entry *table_find(const Table *t, uint32_t key) {
    if (t->cap) {
        size_t i = slot_of(key, t->cap);
        for (;;) {
            const Entry *e = &t->slots[i];
            if (e->state == EMPTY)
                break;
            if (e->state == USED && e->key == key)
                return e;
            i = (i + 1) & (t->cap - 1);
        }
    }
    return t->has_default ? &t->dflt : NULL;
}

static int table_resize(Table *t, size_t cap) {
    Entry *slots = PyMem_Calloc(cap, sizeof(Entry));
    if (!slots) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t j = 0; j < t->cap; j++) {
        if (t->slots[j].state != USED)
            continue;
        size_t i = slot_of(t->slots[j].key, cap);
        while (slots[i].state != EMPTY)
            i = (i + 1) & (cap - 1);
        slots[i] = t->slots[j];
    }
    PyMem_Free(t->slots);
    t->slots = slots;
    t->cap = cap;
    t->filled = t->used;
    return 0;
}

static int table_set(Table *t, uint32_t key, uint32_t addr, uint16_t port, uint8_t gre) {
    if ((t->filled + 1) * 2 > t->cap) {
        /* Rehash (dropping tombstones) to at most a quarter full. */
        size_t cap = 16;
        while ((t->used + 1) * 4 > cap)
            cap *= 2;
        if (table_resize(t, cap) < 0)
            return -1;
    }
    size_t i = slot_of(key, t->cap);
    Entry *tomb = NULL;
    for (;;) {
        Entry *e = &t->slots[i];
        if (e->state == USED && e->key == key) {
            e->addr = addr;
            e->port = port;
            e->gre = gre;
            return 0;
        }
        if (e->state == DELETED && !tomb)
            tomb = e;
        if (e->state == EMPTY) {
            Entry *dst = tomb ? tomb : e;
            if (!tomb)
                t->filled++;
            dst->key = key;
            dst->addr = addr;
            dst->port = port;
            dst->gre = gre;
            dst->state = USED;
            t->used++;
            return 0;
        }
        i = (i + 1) & (t->cap - 1);
    }
}

static int table_del(Table *t, uint32_t key) {
    if (!t->cap)
        return 0;
    size_t i = slot_of(key, t->cap);
    for (;;) {
        Entry *e = &t->slots[i];
        if (e->state == EMPTY)
            return 0;
        if (e->state == USED && e->key == key) {
            e->state = DELETED;
            t->used--;
            return 1;
        }
        i = (i + 1) & (t->cap - 1);
    }
}

/* ---- checksums (RFC 1071), summed in native order, stored with memcpy ---- */

static uint64_t sum_bytes(const unsigned char *p, size_t n, uint64_t acc) {
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        acc += (v & 0xFFFFFFFFu) + (v >> 32);
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        acc += w;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint16_t w = 0;
        memcpy(&w, p, 1);
        acc += w;
    }
    return acc;
}

static uint16_t fold(uint64_t acc) {
    while (acc >> 16)
        acc = (acc & 0xFFFF) + (acc >> 16);
    return (uint16_t)acc;
}

/* The pseudo header of TCP/UDP over IPv4, for a transport length of len. */
static uint64_t pseudo(const unsigned char *ip, unsigned proto, size_t len) {
    uint64_t acc = sum_bytes(ip + 12, 8, 0);
    return acc + htons((uint16_t)proto) + htons((uint16_t)len);
}

static void ip_checksum(unsigned char *ip, size_t ihl) {
    ip[10] = ip[11] = 0;
    uint16_t c = (uint16_t)~fold(sum_bytes(ip, ihl, 0));
    memcpy(ip + 10, &c, 2);
}

static uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put16(unsigned char *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void put32(unsigned char *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* ---- the engine ---- */

typedef struct {
    struct iovec iov[3]; /* [RFC 3519 or GRE header], headers, payload */
    struct sockaddr_in to;
    unsigned char hdr[HDRMAX];
} OutSlot;

typedef struct {
    PyObject_HEAD
    int tun_fd, raw_fd, udp_fd, gre_fd;
    int route_off, accept_off; /* 12 = inner source, 16 = inner destination */
    int vnet;                  /* the TUN carries virtio headers: TSO in, merged segments out */
    Table route, accept;
    unsigned long long out, in, no_route, spoofed, malformed, send_errors, write_errors;
    unsigned long long tso_reads, merged_writes, tun_wakeups, raw_wakeups, not_ipv4;
    unsigned long long gre_rejected, gre_bad_checksum, wrong_encap;
    unsigned char *bufs; /* BATCH buffers of BUFSZ */
    OutSlot *slots;      /* 3 * MAXOUT: raw IP-in-IP, UDP, raw GRE */
    struct mmsghdr *msgs; /* 3 * MAXOUT */
    unsigned n_raw, n_udp, n_gre;
    struct iovec rx_iov[BATCH];
    struct mmsghdr rx_msgs[BATCH];
} Engine;

static int parse_addr(PyObject *obj, uint32_t *out, const char *what) {
    Py_buffer b;
    if (PyObject_GetBuffer(obj, &b, PyBUF_SIMPLE) < 0)
        return -1;
    if (b.len != 4) {
        PyBuffer_Release(&b);
        PyErr_Format(PyExc_ValueError, "%s must be 4 bytes (a packed IPv4 address)", what);
        return -1;
    }
    memcpy(out, b.buf, 4);
    PyBuffer_Release(&b);
    return 0;
}

static int Engine_init(Engine *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"tun_fd", "raw_fd", "udp_fd", "route_offset", "accept_offset",
                         "vnet_hdr", "gre_fd", NULL};
    self->udp_fd = -1;
    self->gre_fd = -1;
    self->vnet = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiiii|pi", kw, &self->tun_fd, &self->raw_fd,
                                     &self->udp_fd, &self->route_off, &self->accept_off,
                                     &self->vnet, &self->gre_fd))
        return -1;
    if (self->udp_fd >= 0 && (self->udp_fd = fcntl(self->udp_fd, F_DUPFD_CLOEXEC, 0)) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if ((self->route_off != 12 && self->route_off != 16) ||
        (self->accept_off != 12 && self->accept_off != 16)) {
        PyErr_SetString(PyExc_ValueError, "offsets must be 12 (source) or 16 (destination)");
        return -1;
    }
    if (!self->bufs) {
        /* Virtual memory: only the pages packets touch become resident. */
        self->bufs = PyMem_RawMalloc((size_t)BATCH * BUFSZ);
        self->slots = PyMem_RawCalloc(3 * MAXOUT, sizeof(OutSlot));
        self->msgs = PyMem_RawCalloc(3 * MAXOUT, sizeof(struct mmsghdr));
        if (!self->bufs || !self->slots || !self->msgs) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static void Engine_dealloc(Engine *self) {
    if (self->udp_fd >= 0)
        close(self->udp_fd);
    PyMem_Free(self->route.slots);
    PyMem_Free(self->accept.slots);
    PyMem_RawFree(self->bufs);
    PyMem_RawFree(self->slots);
    PyMem_RawFree(self->msgs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *do_set(Table *t, PyObject *key, PyObject *addr, int port, int gre) {
    uint32_t a, k = 0;
    if (port < 0 || port > 65535)
        return PyErr_Format(PyExc_ValueError, "port %d out of range", port);
    if (gre && port)
        return PyErr_Format(PyExc_ValueError, "GRE over UDP (port %d) is not offered", port);
    if (parse_addr(addr, &a, "address") < 0)
        return NULL;
    if (key == Py_None) {
        t->has_default = 1;
        t->dflt.addr = a;
        t->dflt.port = (uint16_t)port;
        t->dflt.gre = (uint8_t)gre;
        t->dflt.state = USED;
        Py_RETURN_NONE;
    }
    if (parse_addr(key, &k, "key") < 0)
        return NULL;
    if (table_set(t, k, a, (uint16_t)port, (uint8_t)gre) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *do_del(Table *t, PyObject *key) {
    uint32_t k;
    if (key == Py_None) {
        t->has_default = 0;
        Py_RETURN_NONE;
    }
    if (parse_addr(key, &k, "key") < 0)
        return NULL;
    table_del(t, k);
    Py_RETURN_NONE;
}

static PyObject *Engine_set_route(Engine *self, PyObject *args) {
    PyObject *key, *addr;
    int port = 0, gre = 0;
    if (!PyArg_ParseTuple(args, "OO|ip", &key, &addr, &port, &gre))
        return NULL;
    return do_set(&self->route, key, addr, port, gre);
}

static PyObject *Engine_del_route(Engine *self, PyObject *key) {
    return do_del(&self->route, key);
}

static PyObject *Engine_set_accept(Engine *self, PyObject *args) {
    PyObject *key, *addr;
    int gre = 0;
    if (!PyArg_ParseTuple(args, "OO|p", &key, &addr, &gre))
        return NULL;
    return do_set(&self->accept, key, addr, 0, gre);
}

static PyObject *Engine_del_accept(Engine *self, PyObject *key) {
    return do_del(&self->accept, key);
}

/* The entry a key resolves to (the default if none): (address, port, gre) for
 * routes, (address, gre) for accepts, or None. */
static PyObject *do_lookup(Table *t, PyObject *key, int with_port) {
    uint32_t k = 0;
    const Entry *e;
    if (key == Py_None)
        e = t->has_default ? &t->dflt : NULL;
    else if (parse_addr(key, &k, "key") < 0)
        return NULL;
    else
        e = table_find(t, k);
    if (!e)
        Py_RETURN_NONE;
    if (with_port)
        return Py_BuildValue("(y#iN)", (const char *)&e->addr, (Py_ssize_t)4, (int)e->port,
                             PyBool_FromLong(e->gre));
    return Py_BuildValue("(y#N)", (const char *)&e->addr, (Py_ssize_t)4, PyBool_FromLong(e->gre));
}

static PyObject *Engine_route_of(Engine *self, PyObject *key) {
    return do_lookup(&self->route, key, 1);
}

static PyObject *Engine_accept_of(Engine *self, PyObject *key) {
    return do_lookup(&self->accept, key, 0);
}

static PyObject *Engine_set_udp_fd(Engine *self, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < -1 || fd > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "bad file descriptor %ld", fd);
    /* Its own descriptor (dup): the caller's socket may close and its number be
       reused by a new socket (a move's registration socket, on an unproven address). */
    int own = -1;
    if (fd >= 0 && (own = fcntl((int)fd, F_DUPFD_CLOEXEC, 0)) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (self->udp_fd >= 0)
        close(self->udp_fd);
    self->udp_fd = own;
    Py_RETURN_NONE;
}

/* ---- TUN -> tunnel ---- */

/* Send msgs[0..n) with sendmmsg; a message that fails is counted and skipped. */
static void send_all(Engine *self, int fd, struct mmsghdr *msgs, unsigned n) {
    unsigned done = 0;
    while (done < n) {
        int r = sendmmsg(fd, msgs + done, n - done, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            self->send_errors++; /* e.g. no route to this care-of address: drop it */
            done++;
            continue;
        }
        self->out += (unsigned)r;
        done += (unsigned)r;
    }
}

static void flush_out(Engine *self) {
    if (self->n_raw)
        send_all(self, self->raw_fd, self->msgs, self->n_raw);
    if (self->n_udp)
        send_all(self, self->udp_fd, self->msgs + MAXOUT, self->n_udp);
    if (self->n_gre)
        send_all(self, self->gre_fd, self->msgs + 2 * MAXOUT, self->n_gre);
    self->n_raw = self->n_udp = self->n_gre = 0;
}

/* Packets queued towards this entry's socket. */
static unsigned queued_for(const Engine *self, const Entry *e) {
    return e->port ? self->n_udp : e->gre ? self->n_gre : self->n_raw;
}

/* Queue one tunnel packet: headers (copied into the slot) then a payload slice. */
static unsigned char *queue(Engine *self, const Entry *e, const unsigned char *hdr, size_t hlen,
                            const unsigned char *payload, size_t plen) {
    int udp = e->port != 0;
    unsigned idx = udp ? MAXOUT + self->n_udp++ : e->gre ? 2 * MAXOUT + self->n_gre++
                                                           : self->n_raw++;
    OutSlot *o = &self->slots[idx];
    struct msghdr *h = &self->msgs[idx].msg_hdr;
    int k = 0;
    memcpy(o->hdr, hdr, hlen);
    if (udp) {
        o->iov[k].iov_base = (void *)TUNNEL_DATA_HEADER;
        o->iov[k++].iov_len = sizeof TUNNEL_DATA_HEADER;
    } else if (e->gre) {
        o->iov[k].iov_base = (void *)GRE_HEADER;
        o->iov[k++].iov_len = sizeof GRE_HEADER;
    }
    o->iov[k].iov_base = o->hdr;
    o->iov[k++].iov_len = hlen;
    if (plen) {
        o->iov[k].iov_base = (void *)payload;
        o->iov[k++].iov_len = plen;
    }
    memset(&o->to, 0, sizeof o->to);
    o->to.sin_family = AF_INET;
    o->to.sin_addr.s_addr = e->addr;
    o->to.sin_port = htons(e->port);
    memset(h, 0, sizeof *h);
    h->msg_name = &o->to;
    h->msg_namelen = sizeof o->to;
    h->msg_iov = o->iov;
    h->msg_iovlen = (size_t)k;
    return o->hdr;
}

/* Cut a TSO aggregate (IPv4/TCP, gso_size = mss) into segments with full checksums. */
static void queue_segments(Engine *self, const Entry *e, const unsigned char *ip, size_t len,
                           size_t mss) {
    size_t ihl = (size_t)(ip[0] & 0x0F) * 4;
    size_t thl = (size_t)(ip[ihl + 12] >> 4) * 4;
    size_t hlen = ihl + thl, payload = len - hlen;
    uint16_t id = get16(ip + 4);
    uint32_t seq = get32(ip + ihl + 4);
    uint8_t flags = ip[ihl + 13];
    for (size_t off = 0, i = 0; off < payload; off += mss, i++) {
        size_t seg = payload - off < mss ? payload - off : mss;
        int last = off + seg >= payload;
        unsigned char *h = queue(self, e, ip, hlen, ip + hlen + off, seg);
        unsigned char *th = h + ihl;
        put16(h + 2, (uint16_t)(hlen + seg));
        put16(h + 4, (uint16_t)(id + i));
        ip_checksum(h, ihl);
        put32(th + 4, seq + (uint32_t)off);
        th[13] = (uint8_t)(flags & ~(last ? 0 : TCP_FIN | TCP_PSH) & ~(i ? TCP_CWR : 0));
        th[16] = th[17] = 0;
        uint64_t acc = pseudo(h, 6, thl + seg);
        acc = sum_bytes(th, thl, acc);
        uint16_t c = (uint16_t)~fold(sum_bytes(ip + hlen + off, seg, acc));
        memcpy(th + 16, &c, 2);
    }
}

/* Read one batch from TUN; returns the number of reads. */
static PyObject *Engine_pump_tun(Engine *self, PyObject *Py_UNUSED(ignored)) {
    unsigned reads = 0, b = 0;
    size_t skip = self->vnet ? VNET : 0, queued = 0;
    self->tun_wakeups++;
    while (reads < BATCH) {
        unsigned char *buf = self->bufs + (size_t)b * BUFSZ;
        ssize_t r = read(self->tun_fd, buf, BUFSZ);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN: drained */
        }
        reads++;
        if ((size_t)r > skip && buf[skip] >> 4 != 4) {
            self->not_ipv4++; /* IPv6 the kernel routes here (solicitations): not ours */
            continue;
        }
        if ((size_t)r < skip + 20) {
            self->malformed++;
            continue;
        }
        unsigned char *ip = buf + skip;
        size_t len = (size_t)r - skip;
        uint32_t key;
        memcpy(&key, ip + self->route_off, 4);
        const Entry *e = table_find(&self->route, key);
        if (!e || (e->port && self->udp_fd < 0) || (e->gre && self->gre_fd < 0)) {
            self->no_route++;
            continue;
        }
        uint8_t vflags = 0, gso = GSO_NONE;
        uint16_t gso_size = 0, cstart = 0, coff = 0;
        if (skip) {
            vflags = buf[0];
            gso = buf[1] & (uint8_t)~GSO_ECN;
            memcpy(&gso_size, buf + 4, 2);
            memcpy(&cstart, buf + 6, 2);
            memcpy(&coff, buf + 8, 2);
        }
        size_t ihl = (size_t)(ip[0] & 0x0F) * 4;
        if (ihl < 20 || ihl > len) {
            self->malformed++;
            continue;
        }
        if (gso == GSO_TCPV4) {
            size_t thl = len > ihl + 13 ? (size_t)(ip[ihl + 12] >> 4) * 4 : 0;
            size_t segs = gso_size ? (len - ihl - thl + gso_size - 1) / gso_size : 0;
            if (ip[9] != 6 || thl < 20 || ihl + thl > HDRMAX || len <= ihl + thl ||
                gso_size < 8 || segs > MAXOUT) {
                self->malformed++;
                continue;
            }
            if (queued_for(self, e) + segs > MAXOUT)
                flush_out(self);
            self->tso_reads++;
            queue_segments(self, e, ip, len, gso_size);
        } else if (gso != GSO_NONE) {
            self->malformed++; /* not offered: the kernel segments everything else */
            continue;
        } else {
            if (vflags & F_NEEDS_CSUM) {
                /* Locally sent and not yet summed (TUN_F_CSUM): finish it here. */
                if ((size_t)cstart + coff + 2 > len) {
                    self->malformed++;
                    continue;
                }
                uint16_t c = (uint16_t)~fold(sum_bytes(ip + cstart, len - cstart, 0));
                if (c == 0 && ip[9] == 17)
                    c = 0xFFFF; /* UDP: 0 means "no checksum" */
                memcpy(ip + cstart + coff, &c, 2);
            }
            if (queued_for(self, e) + 1 > MAXOUT)
                flush_out(self);
            size_t h = len < HDRMAX ? len : ihl;
            queue(self, e, ip, h, ip + h, len - h);
        }
        queued += (size_t)r;
        if (++b == BATCH || queued >= FLUSH_BYTES) {
            flush_out(self);
            b = 0;
            queued = 0;
        }
    }
    flush_out(self);
    return PyLong_FromUnsignedLong(reads);
}

/* ---- tunnel -> TUN ---- */

typedef struct {
    const unsigned char *first; /* IPv4 header of the first segment */
    unsigned proto;             /* 6 TCP, 17 UDP */
    size_t hlen, mss, total;    /* headers; payload of the first; payload so far */
    uint32_t next_seq;          /* TCP */
    unsigned n;
    int closed; /* a short (or TCP PSH) segment ends the run */
    int psh;
    struct iovec iov[MAXAGG + 2];
    unsigned char vh[VNET];
    unsigned char hdr[HDRMAX];
} Agg;

static void write_tun(Engine *self, struct iovec *iov, int n) {
    if (writev(self->tun_fd, iov, n) < 0)
        self->write_errors++;
}

/* One packet, as it came (the kernel checks its sums), or marked valid if we did. */
static void write_one(Engine *self, const unsigned char *ip, size_t len, int verified) {
    unsigned char vh[VNET] = {0};
    struct iovec iov[2] = {{vh, VNET}, {(void *)ip, len}};
    if (!self->vnet) {
        write_tun(self, iov + 1, 1);
        return;
    }
    if (verified)
        vh[0] = F_DATA_VALID;
    write_tun(self, iov, 2);
}

static void agg_flush(Engine *self, Agg *a) {
    if (!a->n)
        return;
    if (a->n == 1) {
        write_one(self, a->first, a->hlen + a->total, 1);
        a->n = 0;
        return;
    }
    /* One packet of n segments, as GRO would have made it: the receiving stack
     * takes it whole (TCP) or splits it itself (UDP), and its checksum is marked
     * partial (each segment's was verified). */
    unsigned char *h = a->hdr, *l4 = h + 20;
    uint16_t l4len = (uint16_t)(a->hlen - 20 + a->total);
    memcpy(h, a->first, a->hlen);
    put16(h + 2, (uint16_t)(a->hlen + a->total));
    ip_checksum(h, 20);
    uint16_t csum_offset;
    memset(a->vh, 0, VNET);
    if (a->proto == 6) {
        if (a->psh)
            l4[13] |= TCP_PSH;
        csum_offset = 16;
        a->vh[1] = GSO_TCPV4;
    } else {
        put16(l4 + 4, l4len);
        csum_offset = 6;
        a->vh[1] = GSO_UDP_L4;
    }
    uint16_t c = fold(pseudo(h, a->proto, l4len));
    memcpy(l4 + csum_offset, &c, 2);
    uint16_t gso_size = (uint16_t)a->mss, hl = (uint16_t)a->hlen, cs = 20;
    a->vh[0] = F_NEEDS_CSUM;
    memcpy(a->vh + 2, &hl, 2);
    memcpy(a->vh + 4, &gso_size, 2);
    memcpy(a->vh + 6, &cs, 2);
    memcpy(a->vh + 8, &csum_offset, 2);
    a->iov[0].iov_base = a->vh;
    a->iov[0].iov_len = VNET;
    a->iov[1].iov_base = h;
    a->iov[1].iov_len = a->hlen;
    write_tun(self, a->iov, (int)a->n + 2);
    self->merged_writes++;
    a->n = 0;
}

/* May this packet be merged: a plain IPv4 header, not a fragment, TCP with ACK
 * (and PSH) only or UDP, payload present, checksum right?  Returns the length
 * of its headers, or 0. */
static size_t mergeable(const unsigned char *ip, size_t len) {
    if ((ip[0] & 0x0F) != 5 || (get16(ip + 6) & 0x3FFF) || get16(ip + 2) != len || len < 29)
        return 0;
    if (ip[9] == 17) {
        if (get16(ip + 24) != len - 20)
            return 0;
        if (get16(ip + 26) && /* 0: sent without a checksum */
            fold(sum_bytes(ip + 20, len - 20, pseudo(ip, 17, len - 20))) != 0xFFFF)
            return 0;
        return 28;
    }
    if (ip[9] != 6 || len < 41)
        return 0;
    size_t thl = (size_t)(ip[32] >> 4) * 4;
    if (thl < 20 || 20 + thl >= len || 20 + thl > HDRMAX)
        return 0;
    if ((ip[33] & ~(TCP_ACK | TCP_PSH)) || !(ip[33] & TCP_ACK))
        return 0;
    if (fold(sum_bytes(ip + 20, len - 20, pseudo(ip, 6, len - 20))) != 0xFFFF)
        return 0;
    return 20 + thl;
}

static int same_flow(const Agg *a, const unsigned char *ip, size_t hlen) {
    const unsigned char *f = a->first;
    if (hlen != a->hlen || f[9] != ip[9] || memcmp(f + 12, ip + 12, 12) || /* addresses, ports */
        f[1] != ip[1] || f[8] != ip[8] || (f[6] & 0x40) != (ip[6] & 0x40))
        return 0;
    return a->proto == 17 ||
           (!memcmp(f + 28, ip + 28, 4) &&        /* acknowledgement */
            !memcmp(f + 34, ip + 34, 2) &&        /* window */
            !memcmp(f + 40, ip + 40, hlen - 40)); /* options, timestamps included */
}

static void deliver(Engine *self, Agg *a, const unsigned char *ip, size_t len) {
    if (!self->vnet) {
        write_one(self, ip, len, 0);
        return;
    }
    size_t hlen = mergeable(ip, len);
    if (!hlen) {
        agg_flush(self, a);
        write_one(self, ip, len, 0);
        return;
    }
    size_t plen = len - hlen;
    int tcp = ip[9] == 6;
    uint32_t seq = tcp ? get32(ip + 24) : 0;
    int psh = tcp && (ip[33] & TCP_PSH);
    if (a->n && !a->closed && a->n < MAXAGG && plen <= a->mss &&
        (!tcp || seq == a->next_seq) && a->hlen + a->total + plen <= 65535 &&
        same_flow(a, ip, hlen)) {
        a->iov[2 + a->n].iov_base = (void *)(ip + hlen);
        a->iov[2 + a->n].iov_len = plen;
        a->n++;
        a->total += plen;
        a->next_seq = seq + (uint32_t)plen;
        a->psh = psh;
        a->closed = plen < a->mss || psh;
        return;
    }
    agg_flush(self, a);
    a->first = ip;
    a->proto = ip[9];
    a->hlen = hlen;
    a->mss = plen;
    a->total = plen;
    a->next_seq = seq + (uint32_t)plen;
    a->n = 1;
    a->psh = a->closed = psh;
    a->iov[2].iov_base = (void *)(ip + hlen);
    a->iov[2].iov_len = plen;
}

/* Where the inner packet of a GRE packet (RFC 2784) starts, after the outer
 * header of ihl bytes; 0 if the packet is refused (and counted). */
static size_t gre_inner(Engine *self, const unsigned char *buf, size_t len, size_t ihl) {
    if (len < ihl + 4) {
        self->malformed++;
        return 0;
    }
    const unsigned char *g = buf + ihl;
    size_t glen = g[0] & GRE_C ? 8 : 4;
    /* 2.3: bits 1-5 set (RFC 1701's routing, key, sequence: not ours) or a version
     * other than 0: discard; 2.4 and RFC 3024 A.2: only IPv4 payloads (0x800). */
    if ((g[0] & GRE_RFC1701) || (g[1] & GRE_VERSION) || get16(g + 2) != ETH_P_IPV4) {
        self->gre_rejected++;
        return 0;
    }
    if (len < ihl + glen) {
        self->malformed++;
        return 0;
    }
    /* 2.2: a checksum present is one over the GRE header and the payload. */
    if (glen == 8 && fold(sum_bytes(g, len - ihl, 0)) != 0xFFFF) {
        self->gre_bad_checksum++;
        return 0;
    }
    return ihl + glen;
}

/* A raw tunnel socket (IP-in-IP, or GRE if gre) -> TUN: returns the number of
 * packets received. */
static unsigned long pump_in(Engine *self, int fd, int gre) {
    unsigned long total = 0;
    Agg a;
    a.n = 0;
    self->raw_wakeups++;
    for (int round = 0; round < RAW_ROUNDS; round++) {
        for (unsigned i = 0; i < BATCH; i++) {
            self->rx_iov[i].iov_base = self->bufs + (size_t)i * BUFSZ;
            self->rx_iov[i].iov_len = BUFSZ;
            memset(&self->rx_msgs[i].msg_hdr, 0, sizeof(struct msghdr));
            self->rx_msgs[i].msg_hdr.msg_iov = &self->rx_iov[i];
            self->rx_msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(fd, self->rx_msgs, BATCH, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        total += (unsigned long)r;
        for (int i = 0; i < r; i++) {
            const unsigned char *buf = self->bufs + (size_t)i * BUFSZ;
            size_t len = self->rx_msgs[i].msg_len;
            size_t ihl = (size_t)(buf[0] & 0x0F) * 4;
            if (len < 20 || ihl < 20) {
                self->malformed++;
                continue;
            }
            size_t inner = gre ? gre_inner(self, buf, len, ihl) : ihl;
            if (!inner)
                continue;
            if (len < inner + 20 || buf[inner] >> 4 != 4) {
                self->malformed++;
                continue;
            }
            uint32_t key, outer_src;
            memcpy(&key, buf + inner + self->accept_off, 4);
            memcpy(&outer_src, buf + 12, 4);
            const Entry *e = table_find(&self->accept, key);
            if (!e || e->addr != outer_src) {
                self->spoofed++; /* RFC 3024: only from the registered tunnel end */
                continue;
            }
            if (e->gre != gre) {
                /* RFC 3024 4.3.2: an encapsulation not negotiated at registration */
                self->wrong_encap++;
                continue;
            }
            self->in++;
            deliver(self, &a, buf + inner, len - inner);
        }
        agg_flush(self, &a); /* the next recvmmsg reuses the buffers */
        if (r < BATCH)
            break;
    }
    return total;
}

static PyObject *Engine_pump_raw(Engine *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLong(pump_in(self, self->raw_fd, 0));
}

static PyObject *Engine_pump_gre(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->gre_fd < 0)
        return PyLong_FromUnsignedLong(0);
    return PyLong_FromUnsignedLong(pump_in(self, self->gre_fd, 1));
}

/* A packet checked by the caller (RFC 3519 UDP tunnel data) into TUN. */
static PyObject *Engine_write(Engine *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    unsigned long long before = self->write_errors;
    write_one(self, b.buf, (size_t)b.len, 0);
    PyBuffer_Release(&b);
    if (self->write_errors == before)
        self->in++;
    Py_RETURN_NONE;
}

static PyObject *Engine_counters(Engine *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKsKsKsKsKsKsK}", "out", self->out, "in", self->in,
                         "dropped_no_route", self->no_route, "dropped_spoofed", self->spoofed,
                         "malformed", self->malformed, "send_errors", self->send_errors,
                         "write_errors", self->write_errors, "tso_reads", self->tso_reads,
                         "merged_writes", self->merged_writes, "tun_wakeups", self->tun_wakeups,
                         "raw_wakeups", self->raw_wakeups, "not_ipv4", self->not_ipv4,
                         "gre_rejected", self->gre_rejected, "gre_bad_checksum",
                         self->gre_bad_checksum, "wrong_encap", self->wrong_encap);
}

static PyMethodDef Engine_methods[] = {
    {"set_udp_fd", (PyCFunction)Engine_set_udp_fd, METH_O,
     "set_udp_fd(fd or -1): the socket RFC 3519 tunnel data leaves from"},
    {"set_route", (PyCFunction)Engine_set_route, METH_VARARGS,
     "set_route(key or None, outer address[, udp port[, gre]]): where packets with this key go"},
    {"del_route", (PyCFunction)Engine_del_route, METH_O, "del_route(key or None)"},
    {"set_accept", (PyCFunction)Engine_set_accept, METH_VARARGS,
     "set_accept(key or None, outer source[, gre]): who may tunnel packets with this key to "
     "us, and how"},
    {"del_accept", (PyCFunction)Engine_del_accept, METH_O, "del_accept(key or None)"},
    {"route_of", (PyCFunction)Engine_route_of, METH_O,
     "route_of(key or None): (outer address, udp port, gre) packets with this key go to, or None"},
    {"accept_of", (PyCFunction)Engine_accept_of, METH_O,
     "accept_of(key or None): (outer source, gre) allowed for this key, or None"},
    {"pump_tun", (PyCFunction)Engine_pump_tun, METH_NOARGS, "TUN -> tunnel, one batch"},
    {"pump_raw", (PyCFunction)Engine_pump_raw, METH_NOARGS, "IP-in-IP -> TUN, a few batches"},
    {"pump_gre", (PyCFunction)Engine_pump_gre, METH_NOARGS, "GRE -> TUN, a few batches"},
    {"write", (PyCFunction)Engine_write, METH_O, "write(packet): into TUN, already checked"},
    {"counters", (PyCFunction)Engine_counters, METH_NOARGS, "packet counters"},
    {NULL, NULL, 0, NULL},
};
static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "app.net._fastpath.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Moves packets between a TUN fd and IP-in-IP / GRE / RFC 3519 UDP sockets.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "app.net._fastpath",
    "The userspace tunnel's compiled packet loop.", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
