/* The userspace tunnel's per-packet loop, compiled.
 *
 * Python keeps the control plane (which inner address goes to which outer
 * address, who may send what); this module only moves packets between a TUN
 * device and the tunnel sockets, in batches: one read per packet from TUN
 * (TUN has no batched read without offloads), one sendmmsg per batch towards
 * the peers, one recvmmsg per batch from the raw IP-in-IP socket, one write
 * per packet into TUN.  The pure-Python engine in ipip.py has the same
 * interface and semantics; tests run both.
 *
 * Tables map a 4-byte key taken from the inner packet (its source or its
 * destination address) to an outer IPv4 address (and a UDP port for RFC 3519
 * bindings, 0 for IP-in-IP).  Open addressing, linear probing, tombstones.
 * All calls come from the event loop's thread with the GIL held, so the
 * tables need no lock.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define BATCH 64
#define BUFSZ 65536 /* an IPv4 packet is at most 65535 bytes */
#define RAW_ROUNDS 4 /* recvmmsg batches per wake-up, then yield to the loop */

static const unsigned char TUNNEL_DATA_HEADER[4] = {4, 4, 0, 0}; /* RFC 3519 */

enum { EMPTY = 0, USED = 1, DELETED = 2 };

typedef struct {
    uint32_t key;  /* network byte order, as in the packet */
    uint32_t addr; /* network byte order */
    uint16_t port; /* host byte order; 0 = IP-in-IP */
    uint8_t state;
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

static int table_set(Table *t, uint32_t key, uint32_t addr, uint16_t port) {
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

typedef struct {
    PyObject_HEAD
    int tun_fd, raw_fd, udp_fd;
    int route_off, accept_off; /* 12 = inner source, 16 = inner destination */
    Table route, accept;
    unsigned long long out, in, no_route, spoofed, malformed, send_errors, write_errors;
    int last_send_errno;
    unsigned char *bufs; /* BATCH buffers of BUFSZ */
    struct mmsghdr raw_msgs[BATCH], udp_msgs[BATCH];
    struct iovec raw_iov[BATCH], udp_iov[BATCH][2];
    struct sockaddr_in raw_to[BATCH], udp_to[BATCH];
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
    static char *kw[] = {"tun_fd", "raw_fd", "udp_fd", "route_offset", "accept_offset", NULL};
    self->udp_fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiiii", kw, &self->tun_fd, &self->raw_fd,
                                     &self->udp_fd, &self->route_off, &self->accept_off))
        return -1;
    if ((self->route_off != 12 && self->route_off != 16) ||
        (self->accept_off != 12 && self->accept_off != 16)) {
        PyErr_SetString(PyExc_ValueError, "offsets must be 12 (source) or 16 (destination)");
        return -1;
    }
    if (!self->bufs) {
        /* Virtual memory: only the pages packets touch become resident. */
        self->bufs = PyMem_RawMalloc((size_t)BATCH * BUFSZ);
        if (!self->bufs) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static void Engine_dealloc(Engine *self) {
    PyMem_Free(self->route.slots);
    PyMem_Free(self->accept.slots);
    PyMem_RawFree(self->bufs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* set(table, key or None, addr[, port]) helpers */
static PyObject *do_set(Table *t, PyObject *key, PyObject *addr, int port) {
    uint32_t a, k = 0;
    if (port < 0 || port > 65535)
        return PyErr_Format(PyExc_ValueError, "port %d out of range", port);
    if (parse_addr(addr, &a, "address") < 0)
        return NULL;
    if (key == Py_None) {
        t->has_default = 1;
        t->dflt.addr = a;
        t->dflt.port = (uint16_t)port;
        t->dflt.state = USED;
        Py_RETURN_NONE;
    }
    if (parse_addr(key, &k, "key") < 0)
        return NULL;
    if (table_set(t, k, a, (uint16_t)port) < 0)
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
    int port = 0;
    if (!PyArg_ParseTuple(args, "OO|i", &key, &addr, &port))
        return NULL;
    return do_set(&self->route, key, addr, port);
}

static PyObject *Engine_del_route(Engine *self, PyObject *key) {
    return do_del(&self->route, key);
}

static PyObject *Engine_set_accept(Engine *self, PyObject *args) {
    PyObject *key, *addr;
    if (!PyArg_ParseTuple(args, "OO", &key, &addr))
        return NULL;
    return do_set(&self->accept, key, addr, 0);
}

static PyObject *Engine_del_accept(Engine *self, PyObject *key) {
    return do_del(&self->accept, key);
}

/* Send msgs[0..n) with sendmmsg; a message that fails is counted and skipped. */
static void flush(Engine *self, int fd, struct mmsghdr *msgs, unsigned int n) {
    unsigned int done = 0;
    while (done < n) {
        int r = sendmmsg(fd, msgs + done, n - done, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            self->send_errors++;
            self->last_send_errno = errno;
            done++; /* e.g. no route to this care-of address: drop it, send the rest */
            continue;
        }
        self->out += (unsigned int)r;
        done += (unsigned int)r;
    }
}

/* TUN -> tunnel: returns the number of packets read. */
static PyObject *Engine_pump_tun(Engine *self, PyObject *Py_UNUSED(ignored)) {
    unsigned int n_raw = 0, n_udp = 0, n = 0;
    while (n < BATCH) {
        unsigned char *buf = self->bufs + (size_t)n * BUFSZ;
        ssize_t len = read(self->tun_fd, buf, BUFSZ);
        if (len < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN: drained */
        }
        n++; /* this buffer now holds a packet until the flush below */
        if (len < 20 || buf[0] >> 4 != 4) {
            self->malformed++;
            continue;
        }
        uint32_t key;
        memcpy(&key, buf + self->route_off, 4);
        const Entry *e = table_find(&self->route, key);
        if (!e || (e->port && self->udp_fd < 0)) {
            self->no_route++;
            continue;
        }
        struct sockaddr_in *to;
        struct msghdr *h;
        if (e->port == 0) {
            to = &self->raw_to[n_raw];
            self->raw_iov[n_raw].iov_base = buf;
            self->raw_iov[n_raw].iov_len = (size_t)len;
            h = &self->raw_msgs[n_raw].msg_hdr;
            h->msg_iov = &self->raw_iov[n_raw];
            h->msg_iovlen = 1;
            n_raw++;
        } else {
            to = &self->udp_to[n_udp];
            self->udp_iov[n_udp][0].iov_base = (void *)TUNNEL_DATA_HEADER;
            self->udp_iov[n_udp][0].iov_len = sizeof TUNNEL_DATA_HEADER;
            self->udp_iov[n_udp][1].iov_base = buf;
            self->udp_iov[n_udp][1].iov_len = (size_t)len;
            h = &self->udp_msgs[n_udp].msg_hdr;
            h->msg_iov = self->udp_iov[n_udp];
            h->msg_iovlen = 2;
            n_udp++;
        }
        memset(to, 0, sizeof *to);
        to->sin_family = AF_INET;
        to->sin_addr.s_addr = e->addr;
        to->sin_port = htons(e->port);
        h->msg_name = to;
        h->msg_namelen = sizeof *to;
        h->msg_control = NULL;
        h->msg_controllen = 0;
        h->msg_flags = 0;
    }
    if (n_raw)
        flush(self, self->raw_fd, self->raw_msgs, n_raw);
    if (n_udp)
        flush(self, self->udp_fd, self->udp_msgs, n_udp);
    return PyLong_FromUnsignedLong(n);
}

/* raw IP-in-IP socket -> TUN: returns the number of packets received. */
static PyObject *Engine_pump_raw(Engine *self, PyObject *Py_UNUSED(ignored)) {
    unsigned long total = 0;
    for (int round = 0; round < RAW_ROUNDS; round++) {
        for (unsigned int i = 0; i < BATCH; i++) {
            self->raw_iov[i].iov_base = self->bufs + (size_t)i * BUFSZ;
            self->raw_iov[i].iov_len = BUFSZ;
            memset(&self->raw_msgs[i].msg_hdr, 0, sizeof(struct msghdr));
            self->raw_msgs[i].msg_hdr.msg_iov = &self->raw_iov[i];
            self->raw_msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(self->raw_fd, self->raw_msgs, BATCH, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        total += (unsigned long)r;
        for (int i = 0; i < r; i++) {
            const unsigned char *buf = self->bufs + (size_t)i * BUFSZ;
            size_t len = self->raw_msgs[i].msg_len;
            size_t ihl = (size_t)(buf[0] & 0x0F) * 4;
            if (len < 20 || ihl < 20 || len < ihl + 20 || buf[ihl] >> 4 != 4) {
                self->malformed++;
                continue;
            }
            uint32_t key, outer_src;
            memcpy(&key, buf + ihl + self->accept_off, 4);
            memcpy(&outer_src, buf + 12, 4);
            const Entry *e = table_find(&self->accept, key);
            if (!e || e->addr != outer_src) {
                self->spoofed++; /* RFC 3024: only from the registered tunnel end */
                continue;
            }
            if (write(self->tun_fd, buf + ihl, len - ihl) < 0)
                self->write_errors++;
            else
                self->in++;
        }
        if (r < BATCH)
            break;
    }
    return PyLong_FromUnsignedLong(total);
}

static PyObject *Engine_counters(Engine *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{sKsKsKsKsKsKsK}", "out", self->out, "in", self->in,
                         "dropped_no_route", self->no_route, "dropped_spoofed", self->spoofed,
                         "malformed", self->malformed, "send_errors", self->send_errors,
                         "write_errors", self->write_errors);
}

static PyObject *Engine_set_udp_fd(Engine *self, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < -1 || fd > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "bad file descriptor %ld", fd);
    self->udp_fd = (int)fd;
    Py_RETURN_NONE;
}

static PyMethodDef Engine_methods[] = {
    {"set_udp_fd", (PyCFunction)Engine_set_udp_fd, METH_O,
     "set_udp_fd(fd or -1): the socket RFC 3519 tunnel data leaves from"},
    {"set_route", (PyCFunction)Engine_set_route, METH_VARARGS,
     "set_route(key or None, outer address[, udp port]): where packets with this key go"},
    {"del_route", (PyCFunction)Engine_del_route, METH_O, "del_route(key or None)"},
    {"set_accept", (PyCFunction)Engine_set_accept, METH_VARARGS,
     "set_accept(key or None, outer source): who may tunnel packets with this key to us"},
    {"del_accept", (PyCFunction)Engine_del_accept, METH_O, "del_accept(key or None)"},
    {"pump_tun", (PyCFunction)Engine_pump_tun, METH_NOARGS, "TUN -> tunnel, one batch"},
    {"pump_raw", (PyCFunction)Engine_pump_raw, METH_NOARGS, "IP-in-IP -> TUN, a few batches"},
    {"counters", (PyCFunction)Engine_counters, METH_NOARGS, "packet counters"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "app.net._fastpath.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Moves packets between a TUN fd and IP-in-IP / RFC 3519 UDP sockets.",
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
