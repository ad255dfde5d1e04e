/* The per-span text work of the normaliser, in C: one pass over a str for the text
 * descriptors' shape, one pass per text for the hashing embedder's n-gram counts. Both give
 * exactly what their pure-Python versions give (tests/test_text_scan.py compares them): the
 * Python modules stay the definition and the fallback, and pass their tables in.
 *
 * shape(text, table, names) -> (tokens, word_runs, sentences, visible, letters, scripts | None)
 *
 *   text     a side's text, already cut to MAX_DESCRIBED_CHARS (right-stripped here)
 *   table    bytes(65536): per BMP code point, its class (text_descriptors: 0 space, 1 other,
 *            2 combining mark, 3 + i script i of SCRIPT_NAMES), | 0x80 when the character is
 *            part of a non-CJK word (text_descriptors._NON_CJK_WORD). Past the BMP a code
 *            point has the class of U+FFFF, but the astral Han planes, which are Han.
 *   names    SCRIPT_NAMES
 *
 *   tokens are split() words, word_runs the runs of non-CJK word characters; scripts is a
 *   dict, script name -> letters (those with any), None when the right-stripped text is
 *   ASCII (then its letters are Latin).
 *
 * starts_in(text, starts) -> list of the indexes of the strs of starts found in text
 *
 * ngram_rows(texts, table, powers, salts, dimension, char_weight, word_weight, out)
 *
 *   texts      lowercased texts with no NUL, each read as followed by 4 NULs (hashing._embed)
 *   table      bytes(65536): per BMP code point, 1 when it is a word character (hashing._WORD);
 *              past the BMP, a code point is looked up at U+FFFF
 *   powers     (B, B**2, B**3, B**4) modulo 2**64
 *   salts      the odd multipliers of the 3-, 4-, 5-grams, words and bigrams
 *   dimension  buckets per row: 2 * dimension (bucket, sign) slots are counted
 *   *_weight   hashing.WEIGHTS
 *   out        a writable float32 buffer of len(texts) * dimension: each row's signed,
 *              weighted sums before normalising (written, not added to)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Python 3.11 may still hold a legacy str whose canonical form is made on demand. */
#if PY_VERSION_HEX < 0x030C0000
#define READY(text) PyUnicode_READY(text)
#else
#define READY(text) 0
#endif

enum { SPACE = 0, MARK = 2, FIRST_SCRIPT = 3, MAX_CLASSES = 128, WORD_FLAG = 0x80 };
static const Py_UCS4 ASTRAL_HAN_FIRST = 0x20000, ASTRAL_HAN_LAST = 0x3FFFF;

/* text_descriptors._TERMINAL and the one-character entries of _ENDS. */
static int is_terminal(Py_UCS4 c) {
    return c == '.' || c == '!' || c == '?' || c == 0x3002 || c == 0xFF01 || c == 0xFF1F
        || c == 0x061F || c == 0x0964 || c == 0x2026;
}
static int is_single_end(Py_UCS4 c) {
    return c == 0x3002 || c == 0xFF01 || c == 0xFF1F || c == 0x061F || c == 0x0964;
}

/* What one pass over a text counts (see shape()). */
typedef struct {
    Py_ssize_t counts[MAX_CLASSES];  /* characters per class */
    Py_ssize_t tokens, word_runs, ascii_ends, ends;
    Py_UCS4 top;                     /* every code point or-ed: < 128 for an ASCII text */
} Scan;

/* The class of a code point, | WORD_FLAG (a BMP one from the table). */
static inline uint8_t class_of(Py_UCS4 c, const uint8_t *classes, uint8_t han, uint8_t astral) {
    if (c < 0x10000)
        return classes[c];
    return (uint8_t)((c >= ASTRAL_HAN_FIRST && c <= ASTRAL_HAN_LAST ? han : astral)
                     | (Py_UNICODE_ISALNUM(c) ? WORD_FLAG : 0));
}

/* The pass, once per str kind (a plain array read per character). A sentence end is counted
 * at the character after its mark: ASCII texts (bytes.translate in _shape_python), a mark
 * before any white space; others (_ENDS), before " " or "\n" inside the body, or one of the
 * one-character ends inside the body. */
#define SCAN_LOOP(TYPE)                                                                    \
    do {                                                                                   \
        const TYPE *chars = data;                                                          \
        Py_ssize_t tokens = 0, word_runs = 0, ascii_ends = 0, ends = 0;                    \
        Py_UCS4 top = 0;                                                                   \
        int was_space = 1, was_word = 0, was_mark = 0;                                     \
        for (Py_ssize_t i = 0; i < end; i++) {                                             \
            Py_UCS4 c = chars[i];                                                          \
            top |= c;                                                                      \
            uint8_t cls = class_of(c, classes, han, astral);                               \
            int base = cls & 0x7F, space = base == SPACE, word = (cls & WORD_FLAG) != 0;    \
            counts[i & 3][base]++;                                                         \
            tokens += was_space && !space;                                                 \
            word_runs += word && !was_word;                                                \
            if (was_mark) {                                                                \
                ascii_ends += space && c < 128;                                            \
                ends += i < body_end && (c == ' ' || c == '\n');                           \
            }                                                                              \
            if (c >= 0x061F && i < body_end && is_single_end(c))                           \
                ends++;                                                                    \
            was_space = space, was_word = word;                                            \
            was_mark = c == '.' || c == '!' || c == '?';                                   \
        }                                                                                  \
        scan->tokens = tokens, scan->word_runs = word_runs;                                \
        scan->ascii_ends = ascii_ends, scan->ends = ends, scan->top = top;                 \
    } while (0)

static void scan_text(Scan *scan, int kind, const void *data, Py_ssize_t end,
                      Py_ssize_t body_end, const uint8_t *classes, uint8_t han,
                      uint8_t astral) {
    /* Four tables of counts, by position: a run of one class is then four chains of
     * increments, not one (each waits on the last store to its slot). */
    Py_ssize_t counts[4][MAX_CLASSES];
    memset(counts, 0, sizeof counts);
    if (kind == PyUnicode_1BYTE_KIND)
        SCAN_LOOP(Py_UCS1);
    else if (kind == PyUnicode_2BYTE_KIND)
        SCAN_LOOP(Py_UCS2);
    else
        SCAN_LOOP(Py_UCS4);
    for (int k = 0; k < MAX_CLASSES; k++)
        scan->counts[k] = counts[0][k] + counts[1][k] + counts[2][k] + counts[3][k];
}
#undef SCAN_LOOP

static PyObject *shape(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *text, *names;
    Py_buffer table;
    if (!PyArg_ParseTuple(args, "Uy*O!", &text, &table, &PyTuple_Type, &names))
        return NULL;
    Py_ssize_t scripts = PyTuple_GET_SIZE(names);
    if (table.len != 0x10000 || scripts < 1 || FIRST_SCRIPT + scripts > MAX_CLASSES) {
        PyBuffer_Release(&table);
        PyErr_SetString(PyExc_ValueError, "shape: the table must be 65536 bytes, scripts 1..124");
        return NULL;
    }
    if (READY(text) < 0) {
        PyBuffer_Release(&table);
        return NULL;
    }
    const uint8_t *classes = table.buf;
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    uint8_t han = classes[0x4E00] & 0x7F;  /* U+4E00 is a Han letter */
    uint8_t astral = classes[0xFFFF] & 0x7F;

    /* text.rstrip(), then body: the text less its closing sentence marks (_TERMINAL). */
    Py_ssize_t end = PyUnicode_GET_LENGTH(text);
    while (end > 0 && (class_of(PyUnicode_READ(kind, data, end - 1), classes, han, astral) & 0x7F)
                          == SPACE)
        end--;
    Py_ssize_t body_end = end;
    while (body_end > 0 && is_terminal(PyUnicode_READ(kind, data, body_end - 1)))
        body_end--;

    Scan scan;
    memset(&scan, 0, sizeof scan);
    scan_text(&scan, kind, data, end, body_end, classes, han, astral);
    PyBuffer_Release(&table);

    Py_ssize_t visible = end - scan.counts[SPACE];
    Py_ssize_t letters = scan.counts[MARK];
    for (Py_ssize_t s = 0; s < scripts; s++)
        letters += scan.counts[FIRST_SCRIPT + s];
    int ascii = scan.top < 128;
    /* The body holds a visible character when more are visible than its closing marks. */
    Py_ssize_t sentences = visible > end - body_end ? (ascii ? scan.ascii_ends : scan.ends) + 1 : 0;
    PyObject *found;
    if (ascii) {
        found = Py_NewRef(Py_None);
    } else {
        found = PyDict_New();
        for (Py_ssize_t s = 0; found != NULL && s < scripts; s++) {
            if (!scan.counts[FIRST_SCRIPT + s])
                continue;
            PyObject *n = PyLong_FromSsize_t(scan.counts[FIRST_SCRIPT + s]);
            if (n == NULL || PyDict_SetItem(found, PyTuple_GET_ITEM(names, s), n) < 0)
                Py_CLEAR(found);
            Py_XDECREF(n);
        }
        if (found == NULL)
            return NULL;
    }
    return Py_BuildValue("(nnnnnN)", scan.tokens, scan.word_runs, sentences, visible, letters,
                         found);
}

static inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* hashing._embed's slot(): the top 24 bits of h * salt, scaled to [0, slots). */
static inline Py_ssize_t slot_of(uint64_t h, uint64_t salt, uint64_t slots) {
    return (Py_ssize_t)((((h * salt) >> 40) * slots) >> 24);
}

static int u64_tuple(PyObject *tuple, uint64_t *out, Py_ssize_t n, const char *name) {
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != n) {
        PyErr_Format(PyExc_ValueError, "ngram_counts: %s must be a tuple of %zd ints", name, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(tuple, i));
        if (out[i] == (uint64_t)-1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

/* One text's features added to counts[2 * dimension] (chars) and counts[slots + ...] (words).
 * v: the text's code points + 1, followed by 4 ones (the NUL padding, + 1). */
static void count_text(const uint64_t *v, Py_ssize_t length, const uint8_t *word_table,
                       const uint64_t *p, const uint64_t *salts, uint64_t slots,
                       int64_t *chars, int64_t *words) {
    for (Py_ssize_t i = 0; i < length; i++) {
        uint64_t h3 = v[i] + v[i + 1] * p[0] + v[i + 2] * p[1];
        uint64_t h4 = h3 + v[i + 3] * p[2];
        uint64_t h5 = h4 + v[i + 4] * p[3];
        chars[slot_of(h3, salts[0], slots)]++;
        chars[slot_of(h4, salts[1], slots)]++;
        chars[slot_of(h5, salts[2], slots)]++;
    }
    /* Words: runs of word characters, hashed like substrings, then mixed whole. */
    uint64_t previous = 0;
    int have_previous = 0;
    Py_ssize_t i = 0;
    while (i < length) {
        uint64_t c = v[i] - 1;
        if (!word_table[c < 0x10000 ? c : 0xFFFF]) {
            i++;
            continue;
        }
        uint64_t hash = 0, power = 1;
        Py_ssize_t start = i;
        for (; i < length; i++) {
            c = v[i] - 1;
            if (!word_table[c < 0x10000 ? c : 0xFFFF])
                break;
            hash += v[i] * power;
            power *= p[0];
        }
        uint64_t mixed = splitmix64(hash + (uint64_t)(i - start) * 0x9E3779B97F4A7C15ULL);
        words[slot_of(mixed, salts[3], slots)]++;
        if (have_previous)
            words[slot_of(previous * 0xD6E8FEB86659FD93ULL + mixed, salts[4], slots)]++;
        previous = mixed;
        have_previous = 1;
    }
}

static PyObject *ngram_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *texts, *powers_arg, *salts_arg;
    Py_buffer table, out;
    Py_ssize_t dimension;
    double char_weight, word_weight;
    if (!PyArg_ParseTuple(args, "O!y*O!O!nddw*", &PyList_Type, &texts, &table, &PyTuple_Type,
                          &powers_arg, &PyTuple_Type, &salts_arg, &dimension, &char_weight,
                          &word_weight, &out))
        return NULL;
    PyObject *result = NULL;
    int64_t *counts = NULL;
    uint64_t *v = NULL;
    uint64_t p[4], salts[5];
    Py_ssize_t n = PyList_GET_SIZE(texts), longest = 0;
    if (u64_tuple(powers_arg, p, 4, "powers") < 0 || u64_tuple(salts_arg, salts, 5, "salts") < 0)
        goto done;
    if (table.len != 0x10000 || dimension < 1 || dimension > 65536
        || out.len != (Py_ssize_t)(n * dimension * sizeof(float))) {
        PyErr_SetString(PyExc_ValueError, "ngram_rows: table, dimension or output size do not fit");
        goto done;
    }
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *text = PyList_GET_ITEM(texts, r);
        if (!PyUnicode_Check(text)) {
            PyErr_SetString(PyExc_TypeError, "ngram_rows: texts must be str");
            goto done;
        }
        if (READY(text) < 0)
            goto done;
        if (PyUnicode_GET_LENGTH(text) > longest)
            longest = PyUnicode_GET_LENGTH(text);
    }
    Py_ssize_t slots = 2 * dimension;
    counts = PyMem_Calloc(2 * slots, sizeof(int64_t));
    v = PyMem_Malloc((longest + 5) * sizeof(uint64_t));
    if (counts == NULL || v == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    float *rows = out.buf;
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *text = PyList_GET_ITEM(texts, r);
        int kind = PyUnicode_KIND(text);
        const void *data = PyUnicode_DATA(text);
        Py_ssize_t length = PyUnicode_GET_LENGTH(text);
        /* Code point + 1, as hashing._embed's prefix sums add it (a NUL pad counts 1). */
        if (kind == PyUnicode_1BYTE_KIND) {
            for (Py_ssize_t i = 0; i < length; i++) v[i] = (uint64_t)((const Py_UCS1 *)data)[i] + 1;
        } else if (kind == PyUnicode_2BYTE_KIND) {
            for (Py_ssize_t i = 0; i < length; i++) v[i] = (uint64_t)((const Py_UCS2 *)data)[i] + 1;
        } else {
            for (Py_ssize_t i = 0; i < length; i++) v[i] = (uint64_t)((const Py_UCS4 *)data)[i] + 1;
        }
        for (int k = 0; k < 5; k++)
            v[length + k] = 1;
        memset(counts, 0, 2 * slots * sizeof(int64_t));
        count_text(v, length, table.buf, p, salts, (uint64_t)slots, counts, counts + slots);
        /* hashing._embed's weighting: counts are integers and the weights 0.5 and 1.0, so
         * every value here is exact (no rounding), whatever the order of operations. */
        for (Py_ssize_t b = 0; b < dimension; b++) {
            double plus = char_weight * (double)counts[2 * b] + word_weight * (double)counts[slots + 2 * b];
            double minus = char_weight * (double)counts[2 * b + 1]
                           + word_weight * (double)counts[slots + 2 * b + 1];
            rows[r * dimension + b] = (float)(plus - minus);
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(counts);
    PyMem_Free(v);
    PyBuffer_Release(&table);
    PyBuffer_Release(&out);
    return result;
}

/* starts_in(text, starts) -> [index, ...]: the indexes of the strs of `starts` that occur in
 * `text` (an empty one always does), in one pass over the text: at each position only the
 * starts that begin with its character are compared (text_descriptors.Refusal's literal
 * starts: which of their patterns are worth running). */
enum { MAX_STARTS = 4096 };

static PyObject *starts_in(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *text, *starts;
    if (!PyArg_ParseTuple(args, "UO!", &text, &PyTuple_Type, &starts))
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(starts);
    if (count > MAX_STARTS) {
        PyErr_Format(PyExc_ValueError, "starts_in: more than %d starts", MAX_STARTS);
        return NULL;
    }
    if (READY(text) < 0)
        return NULL;
    /* Chains of the starts by their first character: ASCII ones by character, the rest by
     * their first character's low 7 bits (so compared from their first character on). */
    int16_t first_of[256], next_of[MAX_STARTS];
    char found[MAX_STARTS];
    /* Per start: its length, second character (most candidates fail on it) and data. */
    Py_ssize_t length_of[MAX_STARTS];
    Py_UCS4 second_of[MAX_STARTS];
    int kind_of[MAX_STARTS];
    const void *data_of[MAX_STARTS];
    memset(first_of, -1, sizeof first_of);
    PyObject *result = PyList_New(0);
    if (result == NULL)
        return NULL;
    for (Py_ssize_t j = count - 1; j >= 0; j--) {
        PyObject *start = PyTuple_GET_ITEM(starts, j);
        if (!PyUnicode_Check(start) || READY(start) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "starts_in: starts must be str");
            Py_DECREF(result);
            return NULL;
        }
        found[j] = 0;
        if (PyUnicode_GET_LENGTH(start) == 0) {
            found[j] = 1;
            continue;
        }
        length_of[j] = PyUnicode_GET_LENGTH(start);
        kind_of[j] = PyUnicode_KIND(start);
        data_of[j] = PyUnicode_DATA(start);
        second_of[j] = length_of[j] > 1 ? PyUnicode_READ(kind_of[j], data_of[j], 1) : 0;
        Py_UCS4 c = PyUnicode_READ_CHAR(start, 0);
        int bucket = c < 128 ? (int)c : 128 + (int)(c & 127);
        next_of[j] = first_of[bucket];
        first_of[bucket] = (int16_t)j;
    }
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < length; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        for (int j = first_of[c < 128 ? c : 128 + (c & 127)]; j >= 0; j = next_of[j]) {
            Py_ssize_t n = length_of[j];
            if (found[j] || n > length - i
                || (n > 1 && second_of[j] != PyUnicode_READ(kind, data, i + 1)))
                continue;
            Py_ssize_t k = 0;
            while (k < n && PyUnicode_READ(kind_of[j], data_of[j], k)
                                == PyUnicode_READ(kind, data, i + k))
                k++;
            found[j] = k == n;
        }
    }
    for (Py_ssize_t j = 0; j < count; j++) {
        if (!found[j])
            continue;
        PyObject *index = PyLong_FromSsize_t(j);
        if (index == NULL || PyList_Append(result, index) < 0) {
            Py_XDECREF(index);
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(index);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"shape", shape, METH_VARARGS,
     "shape(text, table, scripts) -> (tokens, word_runs, sentences, visible, letters, "
     "script_counts | None)"},
    {"starts_in", starts_in, METH_VARARGS,
     "starts_in(text, starts) -> the indexes of the starts that occur in text"},
    {"ngram_rows", ngram_rows, METH_VARARGS,
     "ngram_rows(texts, table, powers, salts, dimension, char_weight, word_weight, out) -> None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_text_scan",
    "Text descriptors' shape and the hashing embedder's n-gram counts, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__text_scan(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_STARTS", MAX_STARTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
