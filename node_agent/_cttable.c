/* A compact map of conntrack connection key -> packed counters, for the accounter's state.
 *
 * Why: a Python dict of int -> int costs ~100-250 bytes per live connection (the dict slot,
 * a 64-bit key object and a ~260-bit value object); at 200,000 connections that is a third of
 * the agent's memory limit. This table stores each entry inline in one 48-byte slot (open
 * addressing, linear probing, backward-shift deletion, load <= 0.8: 200,000 entries in 12 MiB).
 *
 * The Python interface is the subset of dict the accounter uses, with the same values: keys
 * are ints in [-2**63, 2**63) (Python's hash() range), values are non-negative ints below
 * 2**258 (node_agent/accounter.py's packed counters: four 64-bit counters shifted left by two,
 * two flag bits). Two methods replace whole-table Python loops: clear_bit(bit) and
 * take_unseen(parity_bit). Iteration (items, keys, values) raises RuntimeError if the table
 * is resized meanwhile (setting an existing key never resizes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define VBYTES 33   /* 258 bits */

typedef struct {
    uint64_t key;
    uint64_t v[4];      /* little-endian 64-bit words of the value's low 256 bits */
    uint8_t hi;         /* bits 256-257 */
    uint8_t used;
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    Py_ssize_t cap;     /* power of two */
    Py_ssize_t n;
    uint64_t gen;       /* bumped on resize: invalidates iterators */
} Table;

static PyTypeObject TableType;
static PyTypeObject IterType;

static inline uint64_t mix(uint64_t k) {   /* splitmix64 finalizer: hash() keys are not uniform */
    k ^= k >> 30; k *= 0xbf58476d1ce4e5b9ULL;
    k ^= k >> 27; k *= 0x94d049bb133111ebULL;
    k ^= k >> 31;
    return k;
}

static int key_of(PyObject *o, uint64_t *out) {
    if (!PyLong_Check(o)) { PyErr_SetString(PyExc_TypeError, "keys are ints"); return -1; }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow) { PyErr_SetString(PyExc_OverflowError, "key outside the signed 64-bit range"); return -1; }
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int value_of(PyObject *o, Slot *s) {
    unsigned char b[VBYTES];
    if (!PyLong_Check(o)) { PyErr_SetString(PyExc_TypeError, "values are ints"); return -1; }
    if (_PyLong_Sign(o) < 0) { PyErr_SetString(PyExc_OverflowError, "negative value"); return -1; }
    if (_PyLong_AsByteArray((PyLongObject *)o, b, VBYTES, 1, 0) < 0) return -1;
    for (int w = 0; w < 4; w++) {
        uint64_t x = 0;
        for (int i = 7; i >= 0; i--) x = (x << 8) | b[w * 8 + i];
        s->v[w] = x;
    }
    if (b[32] > 3) { PyErr_SetString(PyExc_OverflowError, "value needs more than 258 bits"); return -1; }
    s->hi = b[32];
    return 0;
}

static PyObject *value_obj(const Slot *s) {
    unsigned char b[VBYTES];
    for (int w = 0; w < 4; w++) {
        uint64_t x = s->v[w];
        for (int i = 0; i < 8; i++) { b[w * 8 + i] = (unsigned char)(x & 0xff); x >>= 8; }
    }
    b[32] = s->hi;
    return _PyLong_FromByteArray(b, VBYTES, 1, 0);
}

static PyObject *key_obj(uint64_t k) { return PyLong_FromLongLong((long long)k); }

static Py_ssize_t find(const Table *t, uint64_t k) {   /* slot index of k, or -1 */
    Py_ssize_t mask = t->cap - 1, i = (Py_ssize_t)(mix(k) & (uint64_t)mask);
    while (t->slots[i].used) {
        if (t->slots[i].key == k) return i;
        i = (i + 1) & mask;
    }
    return -1;
}

static int resize(Table *t, Py_ssize_t cap) {
    Slot *old = t->slots;
    Py_ssize_t oldcap = t->cap;
    Slot *ns = PyMem_Calloc((size_t)cap, sizeof(Slot));
    if (!ns) { PyErr_NoMemory(); return -1; }
    Py_ssize_t mask = cap - 1;
    for (Py_ssize_t j = 0; j < oldcap; j++) {
        if (!old[j].used) continue;
        Py_ssize_t i = (Py_ssize_t)(mix(old[j].key) & (uint64_t)mask);
        while (ns[i].used) i = (i + 1) & mask;
        ns[i] = old[j];
    }
    PyMem_Free(old);
    t->slots = ns;
    t->cap = cap;
    t->gen++;
    return 0;
}

static int insert(Table *t, uint64_t k, const Slot *val) {
    Py_ssize_t i = find(t, k);
    if (i >= 0) { t->slots[i].hi = val->hi; memcpy(t->slots[i].v, val->v, sizeof val->v); return 0; }
    if ((t->n + 1) * 5 > t->cap * 4 && resize(t, t->cap * 2) < 0) return -1;   /* load <= 0.8 */
    Py_ssize_t mask = t->cap - 1;
    i = (Py_ssize_t)(mix(k) & (uint64_t)mask);
    while (t->slots[i].used) i = (i + 1) & mask;
    t->slots[i] = *val;
    t->slots[i].key = k;
    t->slots[i].used = 1;
    t->n++;
    return 0;
}

static void remove_at(Table *t, Py_ssize_t i) {   /* backward-shift deletion keeps probe chains whole */
    Py_ssize_t mask = t->cap - 1, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!t->slots[j].used) break;
        Py_ssize_t home = (Py_ssize_t)(mix(t->slots[j].key) & (uint64_t)mask);
        /* move j to i if its home is not in the cyclic range (i, j] */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].used = 0;
    t->n--;
}

/* ------------------------------------------------------------------ Python methods */

static PyObject *Table_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Table *t = (Table *)type->tp_alloc(type, 0);
    if (!t) return NULL;
    t->cap = 8;
    t->slots = PyMem_Calloc(8, sizeof(Slot));
    if (!t->slots) { Py_DECREF(t); return PyErr_NoMemory(); }
    return (PyObject *)t;
}

static void Table_dealloc(Table *t) {
    PyMem_Free(t->slots);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static Py_ssize_t Table_len(Table *t) { return t->n; }

static PyObject *Table_getitem(Table *t, PyObject *key) {
    uint64_t k;
    if (key_of(key, &k) < 0) return NULL;
    Py_ssize_t i = find(t, k);
    if (i < 0) { PyErr_SetObject(PyExc_KeyError, key); return NULL; }
    return value_obj(&t->slots[i]);
}

static int Table_setitem(Table *t, PyObject *key, PyObject *val) {
    uint64_t k;
    if (key_of(key, &k) < 0) return -1;
    if (val == NULL) {
        Py_ssize_t i = find(t, k);
        if (i < 0) { PyErr_SetObject(PyExc_KeyError, key); return -1; }
        remove_at(t, i);
        return 0;
    }
    Slot s;
    if (value_of(val, &s) < 0) return -1;
    return insert(t, k, &s);
}

static int Table_contains(Table *t, PyObject *key) {
    uint64_t k;
    if (key_of(key, &k) < 0) return -1;
    return find(t, k) >= 0;
}

static PyObject *Table_get(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) { PyErr_SetString(PyExc_TypeError, "get(key[, default])"); return NULL; }
    uint64_t k;
    if (key_of(args[0], &k) < 0) return NULL;
    Py_ssize_t i = find(t, k);
    if (i < 0) { PyObject *d = nargs == 2 ? args[1] : Py_None; Py_INCREF(d); return d; }
    return value_obj(&t->slots[i]);
}

static PyObject *Table_pop(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) { PyErr_SetString(PyExc_TypeError, "pop(key[, default])"); return NULL; }
    uint64_t k;
    if (key_of(args[0], &k) < 0) return NULL;
    Py_ssize_t i = find(t, k);
    if (i < 0) {
        if (nargs == 2) { Py_INCREF(args[1]); return args[1]; }
        PyErr_SetObject(PyExc_KeyError, args[0]);
        return NULL;
    }
    PyObject *v = value_obj(&t->slots[i]);
    if (v) remove_at(t, i);
    return v;
}

static PyObject *Table_touch(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    /* touch(key, value, parity_bit, parity): the dump's common case without allocating.
       Absent: None. Stored value equal to `value` but for the two flag bits: the stored
       parity bit is set to `parity`, returns True. Otherwise: the stored value (an int). */
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "touch(key, value, bit, parity)"); return NULL; }
    uint64_t k;
    if (key_of(args[0], &k) < 0) return NULL;
    Py_ssize_t i = find(t, k);
    if (i < 0) Py_RETURN_NONE;
    Slot cur;
    if (value_of(args[1], &cur) < 0) return NULL;
    unsigned long long bit = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long parity = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    Slot *s = &t->slots[i];
    if ((s->v[0] | 3) == (cur.v[0] | 3) && s->v[1] == cur.v[1] && s->v[2] == cur.v[2] && s->v[3] == cur.v[3]
            && s->hi == cur.hi) {
        s->v[0] = (s->v[0] & ~(uint64_t)bit) | (uint64_t)parity;
        Py_RETURN_TRUE;
    }
    return value_obj(s);
}

static PyObject *Table_touch4(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    /* touch4(key, ob, op, rb, rp, parity_bit, parity): touch() with the four counters as
       ints (64 bits each), so the caller packs them only when they changed */
    if (nargs != 7) { PyErr_SetString(PyExc_TypeError, "touch4(key, ob, op, rb, rp, bit, parity)"); return NULL; }
    uint64_t k;
    if (key_of(args[0], &k) < 0) return NULL;
    Py_ssize_t i = find(t, k);
    if (i < 0) Py_RETURN_NONE;
    uint64_t c[4];
    for (int j = 0; j < 4; j++) {
        c[j] = (uint64_t)PyLong_AsUnsignedLongLong(args[1 + j]);
        if (c[j] == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    }
    unsigned long long bit = PyLong_AsUnsignedLongLong(args[5]);
    unsigned long long parity = PyLong_AsUnsignedLongLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    /* the packed value (ob | op << 64 | rb << 128 | rp << 192) << 2 as words */
    uint64_t w0 = c[0] << 2, w1 = (c[0] >> 62) | (c[1] << 2), w2 = (c[1] >> 62) | (c[2] << 2);
    uint64_t w3 = (c[2] >> 62) | (c[3] << 2);
    uint8_t hi = (uint8_t)(c[3] >> 62);
    Slot *s = &t->slots[i];
    if ((s->v[0] | 3) == (w0 | 3) && s->v[1] == w1 && s->v[2] == w2 && s->v[3] == w3 && s->hi == hi) {
        s->v[0] = (s->v[0] & ~(uint64_t)bit) | (uint64_t)parity;
        Py_RETURN_TRUE;
    }
    return value_obj(s);
}

static PyObject *Table_clear(Table *t, PyObject *unused) {
    Slot *ns = PyMem_Calloc(8, sizeof(Slot));
    if (!ns) return PyErr_NoMemory();
    PyMem_Free(t->slots);
    t->slots = ns; t->cap = 8; t->n = 0; t->gen++;
    Py_RETURN_NONE;
}

static PyObject *Table_clear_bit(Table *t, PyObject *arg) {
    /* clear_bit(mask): value &= ~mask for every entry (mask < 2**64: the flag bits) */
    unsigned long long m = PyLong_AsUnsignedLongLong(arg);
    if (m == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    for (Py_ssize_t i = 0; i < t->cap; i++)
        if (t->slots[i].used) t->slots[i].v[0] &= ~(uint64_t)m;
    Py_RETURN_NONE;
}

static PyObject *Table_take_unseen(Table *t, PyObject *args) {
    /* take_unseen(bit, parity): remove and return, as a dict, the entries whose
       (value & bit) != parity: the connections the last dump did not show */
    unsigned long long bit, parity;
    if (!PyArg_ParseTuple(args, "KK", &bit, &parity)) return NULL;
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    /* collect first, remove after: a removal shifts entries, a scan must not see that */
    for (Py_ssize_t i = 0; i < t->cap; i++) {
        Slot *s = &t->slots[i];
        if (s->used && (s->v[0] & bit) != parity) {
            PyObject *k = key_obj(s->key), *v = value_obj(s);
            if (!k || !v || PyDict_SetItem(out, k, v) < 0) { Py_XDECREF(k); Py_XDECREF(v); Py_DECREF(out); return NULL; }
            Py_DECREF(k); Py_DECREF(v);
        }
    }
    PyObject *key;
    Py_ssize_t pos = 0;
    PyObject *val;
    while (PyDict_Next(out, &pos, &key, &val)) {
        uint64_t k;
        if (key_of(key, &k) < 0) { Py_DECREF(out); return NULL; }
        Py_ssize_t i = find(t, k);
        if (i >= 0) remove_at(t, i);
    }
    t->gen++;
    return out;
}

static PyObject *Table_sizeof(Table *t, PyObject *unused) {
    return PyLong_FromSsize_t((Py_ssize_t)sizeof(Table) + t->cap * (Py_ssize_t)sizeof(Slot));
}

/* iterators: 0 keys, 1 values, 2 items */
typedef struct { PyObject_HEAD Table *t; Py_ssize_t i; uint64_t gen; int kind; } Iter;

static PyObject *make_iter(Table *t, int kind) {
    Iter *it = PyObject_New(Iter, &IterType);
    if (!it) return NULL;
    Py_INCREF(t);
    it->t = t; it->i = 0; it->gen = t->gen; it->kind = kind;
    return (PyObject *)it;
}

static void Iter_dealloc(Iter *it) { Py_DECREF(it->t); PyObject_Free(it); }

static PyObject *Iter_next(Iter *it) {
    Table *t = it->t;
    if (it->gen != t->gen) { PyErr_SetString(PyExc_RuntimeError, "table changed size during iteration"); return NULL; }
    while (it->i < t->cap) {
        Slot *s = &t->slots[it->i++];
        if (!s->used) continue;
        if (it->kind == 0) return key_obj(s->key);
        if (it->kind == 1) return value_obj(s);
        PyObject *k = key_obj(s->key), *v = value_obj(s);
        if (!k || !v) { Py_XDECREF(k); Py_XDECREF(v); return NULL; }
        PyObject *tup = PyTuple_Pack(2, k, v);
        Py_DECREF(k); Py_DECREF(v);
        return tup;
    }
    return NULL;
}

static PyObject *Table_iter(Table *t) { return make_iter(t, 0); }
static PyObject *Table_keys(Table *t, PyObject *u) { return make_iter(t, 0); }
static PyObject *Table_values(Table *t, PyObject *u) { return make_iter(t, 1); }
static PyObject *Table_items(Table *t, PyObject *u) { return make_iter(t, 2); }

static PyMethodDef Table_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Table_get, METH_FASTCALL, "get(key[, default])"},
    {"pop", (PyCFunction)(void (*)(void))Table_pop, METH_FASTCALL, "pop(key[, default])"},
    {"touch", (PyCFunction)(void (*)(void))Table_touch, METH_FASTCALL, "touch(key, value, bit, parity)"},
    {"touch4", (PyCFunction)(void (*)(void))Table_touch4, METH_FASTCALL, "touch4(key, ob, op, rb, rp, bit, parity)"},
    {"clear", (PyCFunction)Table_clear, METH_NOARGS, "remove every entry"},
    {"clear_bit", (PyCFunction)Table_clear_bit, METH_O, "value &= ~mask for every entry"},
    {"take_unseen", (PyCFunction)Table_take_unseen, METH_VARARGS, "remove and return entries with (value & bit) != parity"},
    {"keys", (PyCFunction)Table_keys, METH_NOARGS, "iterate keys"},
    {"values", (PyCFunction)Table_values, METH_NOARGS, "iterate values"},
    {"items", (PyCFunction)Table_items, METH_NOARGS, "iterate (key, value)"},
    {"__sizeof__", (PyCFunction)Table_sizeof, METH_NOARGS, "bytes used"},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods Table_mapping = {(lenfunc)Table_len, (binaryfunc)Table_getitem, (objobjargproc)Table_setitem};
static PySequenceMethods Table_sequence = {.sq_contains = (objobjproc)Table_contains};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "node_agent._cttable.CounterTable",
    .tp_doc = "conntrack key -> packed counters, 48 bytes a slot",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Table_new,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_as_mapping = &Table_mapping,
    .tp_as_sequence = &Table_sequence,
    .tp_iter = (getiterfunc)Table_iter,
    .tp_methods = Table_methods,
};

static PyTypeObject IterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "node_agent._cttable.Iterator",
    .tp_basicsize = sizeof(Iter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Iter_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Iter_next,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cttable", "Compact accounter state", -1, NULL};

PyMODINIT_FUNC PyInit__cttable(void) {
    if (PyType_Ready(&TableType) < 0 || PyType_Ready(&IterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "CounterTable", (PyObject *)&TableType) < 0) { Py_DECREF(&TableType); Py_DECREF(m); return NULL; }
    return m;
}
