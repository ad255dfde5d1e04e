/* The attributes of every span of a serialised ExportTraceServiceRequest, in one C pass
 * (collectors.common.span_attributes): only those the caller names are converted, so a stage
 * does not build a protobuf wrapper object per attribute of every span.
 *
 * scan(raw, wanted, prefixes) -> [(values, content), ...] | None
 *
 *   raw       the request's bytes, already parsed whole by protobuf (so no input reaches
 *             here that protobuf refused)
 *   wanted    frozenset of attribute keys whose values go to `values` (a dict)
 *   prefixes  tuple of bytes: attributes whose key starts with one go to `content` (a dict,
 *             None when the span has none)
 *
 * One tuple per span, in the order protobuf's repeated fields hold them (resource_spans,
 * scope_spans, spans). Values are what collectors.common.otlp_attributes.any_value gives:
 * str, bool, int, float, bytes, lists for arrays, dicts for key-value lists, None when unset;
 * a key given twice keeps its last value. Anything unusual returns None and the caller reads
 * the protobuf objects instead: a field of a known number with another wire type, a KeyValue
 * with its key or value given twice, an AnyValue with more than one value field (protobuf
 * would merge them), nesting deeper than MAX_DEPTH, a string that is not UTF-8.
 *
 * Field numbers: opentelemetry/proto/collector/trace/v1/trace_service.proto,
 * opentelemetry/proto/trace/v1/trace.proto and opentelemetry/proto/common/v1/common.proto.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { VARINT = 0, FIXED64 = 1, LENGTH_DELIMITED = 2, FIXED32 = 5, MAX_DEPTH = 32 };

typedef struct {
    uint32_t number;
    int wire;
    uint64_t varint;        /* wire type 0 */
    const uint8_t *payload; /* wire types 1, 2 and 5: the value's bytes */
    size_t len;
} Field;

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t value = 0;
    for (int shift = 0; shift < 70 && *p < end; shift += 7) {
        uint8_t byte = *(*p)++;
        if (shift < 64)
            value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* The field at *p; 0 at a malformed field or a group (wire types 3 and 4). */
static int next_field(const uint8_t **p, const uint8_t *end, Field *f)
{
    uint64_t tag, n;
    if (!read_varint(p, end, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
        return 0;
    f->number = (uint32_t)(tag >> 3);
    f->wire = (int)(tag & 7);
    f->payload = *p;
    switch (f->wire) {
    case VARINT:
        return read_varint(p, end, &f->varint);
    case FIXED64:
        n = 8;
        break;
    case LENGTH_DELIMITED:
        if (!read_varint(p, end, &n))
            return 0;
        f->payload = *p;
        break;
    case FIXED32:
        n = 4;
        break;
    default:
        return 0;
    }
    if ((uint64_t)(end - *p) < n)
        return 0;
    f->len = (size_t)n;
    *p += n;
    return 1;
}

static PyObject *any_value(const uint8_t *p, const uint8_t *end, int depth);

/* A KeyValue: sets *key (new reference) and *value (new reference); 0 to give up. */
static int key_value(const uint8_t *p, const uint8_t *end, int depth, PyObject **key,
                     PyObject **value)
{
    Field f;
    const uint8_t *key_at = NULL, *value_at = NULL;
    size_t key_len = 0, value_len = 0;
    int keys = 0, values = 0;
    while (p < end) {
        if (!next_field(&p, end, &f))
            return 0;
        if (f.number == 1 || f.number == 2) {
            if (f.wire != LENGTH_DELIMITED)
                return 0;
            if (f.number == 1) {
                key_at = f.payload, key_len = f.len, keys++;
            } else {
                value_at = f.payload, value_len = f.len, values++;
            }
        }
    }
    if (keys > 1 || values > 1) /* protobuf merges repeated message fields: unusual */
        return 0;
    *key = PyUnicode_DecodeUTF8(key_at ? (const char *)key_at : "", (Py_ssize_t)key_len, NULL);
    if (*key == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (value_at == NULL) {
        *value = Py_NewRef(Py_None);
        return 1;
    }
    *value = any_value(value_at, value_at + value_len, depth + 1);
    if (*value == NULL) {
        Py_CLEAR(*key);
        return 0;
    }
    return 1;
}

/* The elements of an ArrayValue (field 1: AnyValue) or KeyValueList (field 1: KeyValue). */
static PyObject *nested(const uint8_t *p, const uint8_t *end, int depth, int is_kvlist)
{
    Field f;
    PyObject *out = is_kvlist ? PyDict_New() : PyList_New(0);
    if (out == NULL || depth > MAX_DEPTH)
        goto fail;
    while (p < end) {
        if (!next_field(&p, end, &f))
            goto fail;
        if (f.number != 1)
            continue;
        if (f.wire != LENGTH_DELIMITED)
            goto fail;
        if (is_kvlist) {
            PyObject *key, *value;
            if (!key_value(f.payload, f.payload + f.len, depth, &key, &value))
                goto fail;
            int bad = PyDict_SetItem(out, key, value) < 0;
            Py_DECREF(key);
            Py_DECREF(value);
            if (bad)
                goto fail;
        } else {
            PyObject *item = any_value(f.payload, f.payload + f.len, depth + 1);
            if (item == NULL)
                goto fail;
            int bad = PyList_Append(out, item) < 0;
            Py_DECREF(item);
            if (bad)
                goto fail;
        }
    }
    return out;
fail:
    Py_XDECREF(out);
    PyErr_Clear();
    return NULL;
}

/* An AnyValue's Python value (None when unset); NULL (no exception set) to give up. */
static PyObject *any_value(const uint8_t *p, const uint8_t *end, int depth)
{
    /* wire type each value field must have: string, bool, int, double, array, kvlist, bytes */
    static const int WIRE[8] = {-1, LENGTH_DELIMITED, VARINT, VARINT, FIXED64,
                                LENGTH_DELIMITED, LENGTH_DELIMITED, LENGTH_DELIMITED};
    Field f, value = {0};
    int found = 0;
    if (depth > MAX_DEPTH)
        return NULL;
    while (p < end) {
        if (!next_field(&p, end, &f))
            return NULL;
        if (f.number >= 1 && f.number <= 7) {
            if (f.wire != WIRE[f.number] || found++)
                return NULL; /* another wire type, or a second value: protobuf's rules */
            value = f;
        }
    }
    PyObject *out = NULL;
    double number;
    switch (found ? value.number : 0) {
    case 0:
        return Py_NewRef(Py_None);
    case 1:
        out = PyUnicode_DecodeUTF8((const char *)value.payload, (Py_ssize_t)value.len, NULL);
        break;
    case 2:
        return Py_NewRef(value.varint ? Py_True : Py_False);
    case 3:
        return PyLong_FromLongLong((long long)(int64_t)value.varint);
    case 4:
        memcpy(&number, value.payload, 8); /* little-endian, as x86 and arm64 hold it */
        return PyFloat_FromDouble(number);
    case 5:
    case 6:
        return nested(value.payload, value.payload + value.len, depth + 1, value.number == 6);
    case 7:
        return PyBytes_FromStringAndSize((const char *)value.payload, (Py_ssize_t)value.len);
    }
    if (out == NULL)
        PyErr_Clear();
    return out;
}

typedef struct {
    PyObject *wanted;   /* frozenset of str */
    PyObject *prefixes; /* tuple of bytes */
    PyObject *spans;    /* the list returned */
} Scan;

static int starts_with_prefix(Scan *s, const uint8_t *key, size_t len)
{
    Py_ssize_t n = PyTuple_GET_SIZE(s->prefixes);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *prefix = PyTuple_GET_ITEM(s->prefixes, i);
        size_t plen = (size_t)PyBytes_GET_SIZE(prefix);
        if (plen <= len && memcmp(key, PyBytes_AS_STRING(prefix), plen) == 0)
            return 1;
    }
    return 0;
}

/* One Span: appends (values, content) to s->spans; 0 to give up. */
static int span(Scan *s, const uint8_t *p, const uint8_t *end)
{
    Field f, kv;
    PyObject *values = PyDict_New(), *content = NULL;
    if (values == NULL)
        return 0;
    while (p < end) {
        if (!next_field(&p, end, &f))
            goto fail;
        if (f.number != 9)
            continue;
        if (f.wire != LENGTH_DELIMITED)
            goto fail;
        /* The key alone first: most attributes are neither wanted nor content. */
        const uint8_t *q = f.payload, *kv_end = f.payload + f.len, *key = NULL;
        size_t key_len = 0;
        while (q < kv_end) {
            if (!next_field(&q, kv_end, &kv))
                goto fail;
            if (kv.number == 1 && kv.wire == LENGTH_DELIMITED)
                key = kv.payload, key_len = kv.len;
        }
        PyObject *name = PyUnicode_DecodeUTF8(key ? (const char *)key : "",
                                              (Py_ssize_t)key_len, NULL);
        if (name == NULL)
            goto fail;
        int is_wanted = PySet_Contains(s->wanted, name);
        int is_content = key && starts_with_prefix(s, key, key_len);
        Py_DECREF(name);
        if (is_wanted < 0)
            goto fail;
        if (!is_wanted && !is_content)
            continue;
        PyObject *k, *v;
        if (!key_value(f.payload, kv_end, 0, &k, &v))
            goto fail;
        int bad = is_wanted && PyDict_SetItem(values, k, v) < 0;
        if (!bad && is_content) {
            if (content == NULL && (content = PyDict_New()) == NULL)
                bad = 1;
            else
                bad = PyDict_SetItem(content, k, v) < 0;
        }
        Py_DECREF(k);
        Py_DECREF(v);
        if (bad)
            goto fail;
    }
    PyObject *pair = PyTuple_Pack(2, values, content ? content : Py_None);
    Py_DECREF(values);
    Py_XDECREF(content);
    if (pair == NULL)
        return 0;
    int bad = PyList_Append(s->spans, pair) < 0;
    Py_DECREF(pair);
    return !bad;
fail:
    Py_XDECREF(values);
    Py_XDECREF(content);
    PyErr_Clear();
    return 0;
}

/* The repeated length-delimited `number` fields of a message, each handed to `inner`. */
static int each(Scan *s, const uint8_t *p, const uint8_t *end, uint32_t number,
                int (*inner)(Scan *, const uint8_t *, const uint8_t *))
{
    Field f;
    while (p < end) {
        if (!next_field(&p, end, &f))
            return 0;
        if (f.number != number)
            continue;
        if (f.wire != LENGTH_DELIMITED || !inner(s, f.payload, f.payload + f.len))
            return 0;
    }
    return 1;
}

static int scope_spans(Scan *s, const uint8_t *p, const uint8_t *end)
{
    return each(s, p, end, 2, span); /* ScopeSpans.spans */
}

static int resource_spans(Scan *s, const uint8_t *p, const uint8_t *end)
{
    return each(s, p, end, 2, scope_spans); /* ResourceSpans.scope_spans */
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_buffer raw;
    Scan s;
    if (!PyArg_ParseTuple(args, "y*O!O!", &raw, &PyFrozenSet_Type, &s.wanted, &PyTuple_Type,
                          &s.prefixes))
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(s.prefixes); i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(s.prefixes, i))) {
            PyBuffer_Release(&raw);
            PyErr_SetString(PyExc_TypeError, "prefixes must be a tuple of bytes");
            return NULL;
        }
    }
    s.spans = PyList_New(0);
    if (s.spans == NULL) {
        PyBuffer_Release(&raw);
        return NULL;
    }
    const uint8_t *p = raw.buf;
    int ok = each(&s, p, p + raw.len, 1, resource_spans); /* request.resource_spans */
    PyBuffer_Release(&raw);
    if (!ok) {
        Py_DECREF(s.spans);
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return s.spans;
}

static PyMethodDef METHODS[] = {
    {"scan", scan, METH_VARARGS,
     "scan(raw, wanted, prefixes) -> [(values, content), ...] per span, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_span_attributes",
    "The wanted attributes of every span of a serialised OTLP trace request, in C.", -1,
    METHODS,
};

PyMODINIT_FUNC PyInit__span_attributes(void) { return PyModule_Create(&MODULE); }
