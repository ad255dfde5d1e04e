/* The usual case of collectors.receiver.trace_split, in C: one pass over a serialised
 * ExportTraceServiceRequest places every span on its otlp_spans partition and writes one
 * message per partition, spans in request order. Anything unusual (ids of the wrong length,
 * a wire type the schema does not declare, a message over the limit) returns None, and the
 * caller goes on in Python (trace_split._by_trace: the same spans on the same partitions); the caller has already parsed the whole request, so no input reaches here that
 * protobuf refused.
 *
 * split(raw, partitions, resources, limit) -> ([(key, body), ...], accepted, rejected) | None
 *
 *   raw         the request's bytes
 *   partitions  partitions of otlp_spans (>= 1)
 *   resources   per ResourceSpans, in order, its `resource` field as the caller re-encoded it
 *               after the tenant stamp (tag and length included; b"" when it has none)
 *   limit       the largest message, in bytes
 *
 * A partition's key is the lowercase hex trace id of its first span; Kafka places it with
 * murmur2 (seed 0x9747b28c), as every span in the message would be placed alone.
 *
 * Field numbers: opentelemetry/proto/collector/trace/v1/trace_service.proto and
 * opentelemetry/proto/trace/v1/trace.proto.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    REQUEST_RESOURCE_SPANS = 1,
    RESOURCE_SPANS_RESOURCE = 1,
    RESOURCE_SPANS_SCOPE_SPANS = 2,
    SCOPE_SPANS_SPANS = 2,
    SPAN_TRACE_ID = 1,
    SPAN_SPAN_ID = 2,
    LENGTH_DELIMITED = 2,
    TRACE_ID_BYTES = 16,
    SPAN_ID_BYTES = 8,
};
/* Tags (field << 3 | wire type 2) of the fields the messages are rebuilt from. */
static const uint8_t TAG_RESOURCE_SPANS = 0x0a, TAG_SCOPE_SPANS = 0x12, TAG_SPAN = 0x12;

/* --- reading the wire format -------------------------------------------------------- */

typedef struct {
    uint32_t number;
    int wire;
    const uint8_t *start;   /* the tag's first byte */
    const uint8_t *payload; /* length-delimited fields: the bytes after the length */
    size_t len;
    const uint8_t *end;     /* just after the field */
} Field;

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t value = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t byte = *(*p)++;
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
    f->start = *p;
    if (!read_varint(p, end, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
        return 0;
    f->number = (uint32_t)(tag >> 3);
    f->wire = (int)(tag & 7);
    switch (f->wire) {
    case 0:
        if (!read_varint(p, end, &n))
            return 0;
        break;
    case 1:
        if (end - *p < 8)
            return 0;
        *p += 8;
        break;
    case 2:
        if (!read_varint(p, end, &n) || (uint64_t)(end - *p) < n)
            return 0;
        f->payload = *p;
        f->len = (size_t)n;
        *p += n;
        break;
    case 5:
        if (end - *p < 4)
            return 0;
        *p += 4;
        break;
    default:
        return 0;
    }
    f->end = *p;
    return 1;
}

/* --- what one pass collects ----------------------------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t len, cap;
} Bytes;

static int bytes_add(Bytes *b, const uint8_t *data, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *grown = realloc(b->data, cap);
        if (!grown)
            return 0;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    return 1;
}

typedef struct {
    Bytes head; /* every field but `resource` and `scope_spans`, as sent */
} Resource;

typedef struct {
    size_t resource;
    Bytes head; /* every field but `spans` (scope, schema_url, unknown), as sent */
} Scope;

typedef struct {
    size_t scope;
    const uint8_t *bytes; /* the span as sent */
    size_t len;
    const uint8_t *trace_id;
    uint32_t partition;
    int valid;
} Span;

typedef struct {
    Resource *resources;
    size_t n_resources, cap_resources;
    Scope *scopes;
    size_t n_scopes, cap_scopes;
    Span *spans;
    size_t n_spans, cap_spans;
} Request;

#define GROW(array, n, cap)                                                               \
    do {                                                                                  \
        if ((n) == (cap)) {                                                               \
            size_t grown_cap = (cap) ? (cap) * 2 : 16;                                    \
            void *grown = realloc((array), grown_cap * sizeof(*(array)));                 \
            if (!grown)                                                                   \
                return 0;                                                                 \
            (array) = grown;                                                              \
            (cap) = grown_cap;                                                            \
        }                                                                                 \
    } while (0)

static void request_free(Request *r)
{
    for (size_t i = 0; i < r->n_resources; i++)
        free(r->resources[i].head.data);
    for (size_t i = 0; i < r->n_scopes; i++)
        free(r->scopes[i].head.data);
    free(r->resources);
    free(r->scopes);
    free(r->spans);
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* 1: read; 0: not a span this path takes, or out of memory (Python then does the work). */
static int read_span(Request *r, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len, *trace_id = NULL, *span_id = NULL;
    size_t trace_len = 0, span_len = 0;
    const uint8_t *at = p;
    Field f;
    while (at < end) {
        if (!next_field(&at, end, &f))
            return 0;
        if (f.number != SPAN_TRACE_ID && f.number != SPAN_SPAN_ID)
            continue;
        if (f.wire != LENGTH_DELIMITED)
            return 0;
        if (f.number == SPAN_TRACE_ID) { /* a repeated singular field: the last one wins */
            trace_id = f.payload;
            trace_len = f.len;
        } else {
            span_id = f.payload;
            span_len = f.len;
        }
    }
    if (trace_len != TRACE_ID_BYTES || span_len != SPAN_ID_BYTES)
        return 0;
    GROW(r->spans, r->n_spans, r->cap_spans);
    Span *s = &r->spans[r->n_spans++];
    s->scope = r->n_scopes - 1;
    s->bytes = p;
    s->len = len;
    s->trace_id = trace_id;
    s->partition = 0;
    s->valid = !all_zero(trace_id, TRACE_ID_BYTES) && !all_zero(span_id, SPAN_ID_BYTES);
    return 1;
}

static int read_scope(Request *r, const uint8_t *p, size_t len)
{
    GROW(r->scopes, r->n_scopes, r->cap_scopes);
    Scope *scope = &r->scopes[r->n_scopes++]; /* read_span grows only r->spans: it stays put */
    memset(scope, 0, sizeof(*scope));
    scope->resource = r->n_resources - 1;
    const uint8_t *at = p, *end = p + len;
    Field f;
    while (at < end) {
        if (!next_field(&at, end, &f))
            return 0;
        if (f.number == SCOPE_SPANS_SPANS) {
            if (f.wire != LENGTH_DELIMITED || !read_span(r, f.payload, f.len))
                return 0;
        } else if (!bytes_add(&scope->head, f.start, f.end - f.start)) {
            return 0;
        }
    }
    return 1;
}

static int read_resource(Request *r, const uint8_t *p, size_t len)
{
    GROW(r->resources, r->n_resources, r->cap_resources);
    /* read_scope grows r->scopes and r->spans only: this pointer stays put */
    Resource *resource = &r->resources[r->n_resources++];
    memset(resource, 0, sizeof(*resource));
    const uint8_t *at = p, *end = p + len;
    Field f;
    while (at < end) {
        if (!next_field(&at, end, &f))
            return 0;
        if (f.number == RESOURCE_SPANS_RESOURCE || f.number == RESOURCE_SPANS_SCOPE_SPANS) {
            if (f.wire != LENGTH_DELIMITED)
                return 0;
            /* the resource itself comes from the caller, re-encoded after the tenant stamp */
            if (f.number == RESOURCE_SPANS_SCOPE_SPANS && !read_scope(r, f.payload, f.len))
                return 0;
        } else if (!bytes_add(&resource->head, f.start, f.end - f.start)) {
            return 0;
        }
    }
    return 1;
}

static int read_request(Request *r, const uint8_t *p, size_t len)
{
    const uint8_t *at = p, *end = p + len;
    Field f;
    while (at < end) {
        if (!next_field(&at, end, &f))
            return 0;
        if (f.number != REQUEST_RESOURCE_SPANS)
            continue; /* an unknown field of the request: not part of any message */
        if (f.wire != LENGTH_DELIMITED || !read_resource(r, f.payload, f.len))
            return 0;
    }
    return 1;
}

/* --- placement: Kafka's murmur2 of the lowercase hex trace id ------------------------- */

static uint32_t murmur2(const uint8_t *data, size_t length)
{
    const uint32_t m = 0x5bd1e995;
    uint32_t h = 0x9747b28c ^ (uint32_t)length;
    size_t whole = length & ~(size_t)3;
    for (size_t i = 0; i < whole; i += 4) {
        uint32_t k = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 |
                     (uint32_t)data[i + 2] << 16 | (uint32_t)data[i + 3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (length & 3) {
    case 3:
        h ^= (uint32_t)data[whole + 2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)data[whole + 1] << 8;
        /* fall through */
    case 1:
        h ^= (uint32_t)data[whole];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

static void hex(const uint8_t *id, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < TRACE_ID_BYTES; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 15];
    }
}

/* --- writing the messages -------------------------------------------------------------- */

static size_t varint_size(size_t n)
{
    size_t size = 1;
    while (n >= 0x80) {
        n >>= 7;
        size++;
    }
    return size;
}

static uint8_t *put_varint(uint8_t *out, size_t n)
{
    while (n >= 0x80) {
        *out++ = (uint8_t)(n & 0x7f) | 0x80;
        n >>= 7;
    }
    *out++ = (uint8_t)n;
    return out;
}

static size_t field_size(size_t payload) { return 1 + varint_size(payload) + payload; }

/* A partition's spans, order[0..n): runs that share a scope become one ScopeSpans, and
 * consecutive runs of one resource share its ResourceSpans, as trace_split._request writes
 * them. */
static size_t resource_head_size(const Request *r, PyObject *const *resources, size_t i)
{
    return r->resources[i].head.len + (size_t)PyBytes_GET_SIZE(resources[i]);
}

/* The payload size of the ScopeSpans of the run starting at order[*at]; *at moves past it. */
static size_t run_size(const Request *r, const size_t *order, size_t n, size_t *at)
{
    size_t scope = r->spans[order[*at]].scope, size = r->scopes[scope].head.len;
    for (; *at < n && r->spans[order[*at]].scope == scope; (*at)++)
        size += field_size(r->spans[order[*at]].len);
    return size;
}

/* The payload size of the ResourceSpans starting at order[at]. */
static size_t resource_payload_size(const Request *r, PyObject *const *resources,
                                    const size_t *order, size_t n, size_t at)
{
    size_t resource = r->scopes[r->spans[order[at]].scope].resource;
    size_t size = resource_head_size(r, resources, resource);
    while (at < n && r->scopes[r->spans[order[at]].scope].resource == resource)
        size += field_size(run_size(r, order, n, &at));
    return size;
}

static size_t message_size(const Request *r, PyObject *const *resources, const size_t *order,
                           size_t n)
{
    size_t size = 0, at = 0;
    while (at < n) {
        size_t resource = r->scopes[r->spans[order[at]].scope].resource;
        size += field_size(resource_payload_size(r, resources, order, n, at));
        while (at < n && r->scopes[r->spans[order[at]].scope].resource == resource)
            at++;
    }
    return size;
}

static uint8_t *write_message(uint8_t *out, const Request *r, PyObject *const *resources,
                              const size_t *order, size_t n)
{
    size_t at = 0;
    while (at < n) {
        size_t resource = r->scopes[r->spans[order[at]].scope].resource;
        *out++ = TAG_RESOURCE_SPANS;
        out = put_varint(out, resource_payload_size(r, resources, order, n, at));
        const Bytes *head = &r->resources[resource].head;
        memcpy(out, head->data, head->len);
        out += head->len;
        memcpy(out, PyBytes_AS_STRING(resources[resource]), PyBytes_GET_SIZE(resources[resource]));
        out += PyBytes_GET_SIZE(resources[resource]);
        while (at < n && r->scopes[r->spans[order[at]].scope].resource == resource) {
            size_t scope = r->spans[order[at]].scope, probe = at;
            *out++ = TAG_SCOPE_SPANS;
            out = put_varint(out, run_size(r, order, n, &probe));
            memcpy(out, r->scopes[scope].head.data, r->scopes[scope].head.len);
            out += r->scopes[scope].head.len;
            for (; at < probe; at++) {
                const Span *s = &r->spans[order[at]];
                *out++ = TAG_SPAN;
                out = put_varint(out, s->len);
                memcpy(out, s->bytes, s->len);
                out += s->len;
            }
        }
    }
    return out;
}

/* --- the Python function -------------------------------------------------------------- */

static PyObject *messages(const Request *r, PyObject *const *resources, size_t partitions,
                          Py_ssize_t limit, size_t accepted)
{
    /* A stable counting sort: partitions in order, each in request order. */
    size_t *starts = calloc(partitions + 1, sizeof(size_t));
    size_t *order = malloc((accepted ? accepted : 1) * sizeof(size_t));
    PyObject *out = NULL, *list = NULL;
    if (!starts || !order) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < r->n_spans; i++)
        if (r->spans[i].valid)
            starts[r->spans[i].partition + 1]++;
    for (size_t p = 0; p < partitions; p++)
        starts[p + 1] += starts[p];
    {
        size_t *next = malloc((partitions ? partitions : 1) * sizeof(size_t));
        if (!next) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(next, starts, partitions * sizeof(size_t));
        for (size_t i = 0; i < r->n_spans; i++)
            if (r->spans[i].valid)
                order[next[r->spans[i].partition]++] = i;
        free(next);
    }
    list = PyList_New(0);
    if (!list)
        goto done;
    for (size_t p = 0; p < partitions; p++) {
        size_t n = starts[p + 1] - starts[p];
        if (!n)
            continue;
        const size_t *spans = order + starts[p];
        size_t size = message_size(r, resources, spans, n);
        if (size > (size_t)limit) { /* packed trace by trace instead, in Python */
            Py_CLEAR(list);
            out = Py_NewRef(Py_None);
            goto done;
        }
        PyObject *body = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
        if (!body)
            goto done;
        write_message((uint8_t *)PyBytes_AS_STRING(body), r, resources, spans, n);
        char key[2 * TRACE_ID_BYTES];
        hex(r->spans[spans[0]].trace_id, key);
        PyObject *item = Py_BuildValue("(s#N)", key, (Py_ssize_t)sizeof(key), body);
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    out = Py_BuildValue("(Onn)", list, (Py_ssize_t)accepted,
                        (Py_ssize_t)(r->n_spans - accepted));
done:
    Py_XDECREF(list);
    free(starts);
    free(order);
    return out;
}

static PyObject *split(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer raw;
    Py_ssize_t partitions, limit;
    PyObject *resources_arg, *resources = NULL, *out = NULL;
    Request r = {0};
    if (!PyArg_ParseTuple(args, "y*nOn:split", &raw, &partitions, &resources_arg, &limit))
        return NULL;
    if (partitions < 1) {
        PyErr_SetString(PyExc_ValueError, "partitions must be at least 1");
        goto done;
    }
    resources = PySequence_Fast(resources_arg, "resources must be a sequence of bytes");
    if (!resources)
        goto done;
    PyObject *const *items = PySequence_Fast_ITEMS(resources);
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(resources); i++) {
        if (!PyBytes_Check(items[i])) {
            PyErr_SetString(PyExc_TypeError, "resources must be a sequence of bytes");
            goto done;
        }
    }
    if (!read_request(&r, raw.buf, (size_t)raw.len) ||
        r.n_resources != (size_t)PySequence_Fast_GET_SIZE(resources)) {
        if (PyErr_Occurred())
            goto done;
        out = Py_NewRef(Py_None);
        goto done;
    }
    size_t accepted = 0;
    for (size_t i = 0; i < r.n_spans; i++) {
        Span *s = &r.spans[i];
        if (!s->valid)
            continue;
        char key[2 * TRACE_ID_BYTES];
        hex(s->trace_id, key);
        s->partition = (murmur2((const uint8_t *)key, sizeof(key)) & 0x7fffffff) %
                       (uint32_t)partitions;
        accepted++;
    }
    out = messages(&r, items, (size_t)partitions, limit, accepted);
done:
    request_free(&r);
    Py_XDECREF(resources);
    PyBuffer_Release(&raw);
    return out;
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS,
     "split(raw, partitions, resources, limit) -> ([(key, body), ...], accepted, rejected) "
     "or None: see collectors/receiver/_trace_split.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "observer.collectors.receiver._trace_split",
    "The usual case of collectors.receiver.trace_split, in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__trace_split(void) { return PyModule_Create(&module); }
