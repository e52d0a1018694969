/* The weighted group-lasso proximal step on the CPU, optionally fused with the Adam update.
 *
 * The CPU implementation of optim.prox's moment pass, moment root and write (the torch code
 * there is the reference, and the implementation on other devices). For a tile of whole
 * groups of one tensor it (optionally) applies Adam's update while summing ||x||^2, then the
 * moments n_k = sum x^2 r^(2+k) of r = 1/(rho + tau/d), certifies the root from them (the
 * rules of optim.prox._moment_root, one group at a time) and writes z = x * d/(d + s),
 * s = tau/theta, for the settled groups. Groups it cannot settle are left as Adam made them
 * and flagged open: Python solves them on float64 rows. Terms are formed in the tensor's
 * dtype as the torch code forms them and summed in double, position by position over the
 * output rows: an order that depends neither on vector width nor on threads, so results are
 * deterministic. Tiles are long contiguous row segments (the hardware prefetchers stream
 * them); threads take whole tiles.
 *
 * Built by optim/kernel.py with -O3 -ffp-contract=off -fno-math-errno: IEEE semantics are
 * kept, so NaN and infinity propagate as in torch.
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    void *x;             /* parameters, updated in place */
    const void *d;       /* the metric d; with Adam NULL: d = sqrt(v) + c */
    const void *g;       /* Adam: the gradient, or NULL for no Adam update */
    void *m, *v;         /* Adam: the first and second moments, updated in place */
    const void *rho;     /* Adam: the moments' expansion points, one per group (dtype T), or NULL */
    double c;            /* Adam: d = sqrt(v) + c (c rounded to the dtype first) */
    double alpha;        /* Adam: the step, x <- x * decay - alpha * m / d */
    double decay;        /* Adam: 1 - lr * weight_decay (AdamW), else 1 */
    double wd;           /* Adam: weight decay added to the gradient (Adam), else 0 */
    int64_t O, A, C, B;  /* element (o, a, j, b) sits at ((o*A + a)*C + j)*B + b; group j */
    double tau;          /* alpha * lambda_g of the proximal step */
    int64_t g0;          /* index of the tensor's group 0 in the per-group outputs */
} pk_tensor;

typedef struct {
    int64_t t, j0, j1; /* groups j0 .. j1-1 of tensor t */
    int64_t cost;      /* elements, plus a share for the per-group work */
} pk_tile;

typedef struct {
    const pk_tensor *tensors;
    const pk_tile *tiles;
    int64_t count, *next; /* the tiles, taken in order by whichever worker is free */
    int64_t max_positions;
    int is_double;
    double beta1, beta2, tol;
    double *theta, *start;
    uint8_t *settled;
    double *scratch; /* SCRATCH arrays of max_positions doubles */
} pk_job;

#define MAX_POSITIONS 8192 /* per tile: long rows (streamed), sums that stay in L2 */
#define TOO_LARGE -2       /* a group with more than MAX_POSITIONS elements per row: left to the torch code */
#define SCRATCH 10 /* acc, n0..n4, Ag, rho_p, rmax_p, s_p */

/* The rules of optim.prox._moment_root for one group (float64), torch's NaN semantics kept:
 * maximum/clamp propagate NaN, comparisons with NaN are false. */
static double nan_max(double a, double b) { return (isnan(a) || isnan(b)) ? NAN : (a > b ? a : b); }

static void moment_root(double A, double rho, double r_max, const double *n, double size, double eps,
                        double tiny_normal, double tol, double *theta_out, double *start_out,
                        uint8_t *settled_out) {
    const double tiny = tiny_normal * eps;
    const double n0 = n[0], n1 = n[1], n2 = n[2], n3 = n[3], n4 = n[4];
    const double rbar = n1 / n0;
    const double var = fabs(n2 / n0 - rbar * rbar) + 64 * eps * n2 / n0;
    const double det = n0 * n2 - n1 * n1;
    const double a = (n1 * n2 - n0 * n3) / det;
    const double b = (n1 * n3 - n2 * n2) / det;
    const double disc = sqrt(a * a / 4 - b);
    double r1 = -a / 2 + disc, r2 = -a / 2 - disc;
    double w1 = (n1 - r2 * n0) / (r1 - r2);
    const int two = (det > 64 * eps * n0 * n2) && (r2 >= 0) && (r1 > r2) && (r1 * rho <= 1) && (w1 > 0) && (w1 < n0);
    if (!two) {
        r1 = r2 = rbar;
        w1 = n0;
    }
    const double a_ = fabs(a), b_ = fabs(b);
    const double e2 = fabs(n2 + a * n1 + b * n0) + 8 * eps * (n2 + a_ * n1 + b_ * n0);
    const double e3 = fabs(n3 + a * n2 + b * n1) + 12 * eps * (n3 + a_ * n2 + b_ * n1);
    const double pi2 = fabs(n4 + 2 * a * n3 + (a * a + 2 * b) * n2 + 2 * a * b * n1 + b * b * n0) +
                       16 * eps * (n4 + 2 * a_ * n3 + (a * a + 2 * b_) * n2 + 2 * a_ * b_ * n1 + b * b * n0);
    const double w2 = n0 - w1;
    double delta = 0, f = 0, psi = 0;
    for (int k = 0; k <= 4; k++) {
        const double u1 = 1 / (1 + delta * r1), u2 = 1 / (1 + delta * r2);
        f = w1 * u1 * u1 + w2 * u2 * u2;
        psi = w1 * r1 * u1 * u1 * u1 + w2 * r2 * u2 * u2 * u2;
        if (k < 4) delta = nan_max(delta + f * (sqrt(f) - 1) / psi, -rho);
    }
    const double theta = rho + delta;
    double m = rho / theta;
    m = isnan(m) ? m : (m < 1 ? 1 : m);
    const double ad = fabs(delta), m2 = m * m, m3 = m2 * m, m4 = m2 * m2, m5 = m4 * m, m6 = m3 * m3;
    const double ad2 = ad * ad, ad3 = ad2 * ad, ad4 = ad2 * ad2;
    double one_sided = 3 * ad2 * m4 * n0 * var;
    double defect = 2 * ad * m3 * fabs(n1 - rbar * n0);
    if (two) {
        one_sided = 5 * ad4 * m6 * pi2;
        defect = (3 * ad2 * m4 + 4 * fabs(a) * ad3 * m5) * e2 + 4 * ad3 * m5 * e3;
    }
    const double under = 2 * size * tiny * (r_max * r_max + r_max + 1);
    const double rounding = (3 + 16 * ad * rbar) * eps + under / n0;
    /* 1 - rho r cancels when rho d >> tau: its rounding is a few eps, absolute (below 16 eps), so
     * F(0) >= n0 / (1 - rho rbar)^2 (Jensen) is at least n0 (1 - 32 eps) / (jensen + 16 eps)^2. */
    double jensen = 1 - rho * rbar;
    jensen = isnan(jensen) ? jensen : (jensen < 0 ? 0 : jensen);
    const double lower = n0 * (1 - 32 * eps) / ((jensen + 16 * eps) * (jensen + 16 * eps));
    const int certified = (fabs(f - 1) <= 4 * eps) && (0.6 * one_sided + 1.2 * defect + rounding <= 0.6 * tol) &&
                          (theta > 0) && (size * tiny_normal / eps <= A) && (lower > 1);
    /* 1 - rho r_max cancels in the same way: taken 16 eps lower, it is at most the true gap. */
    double gap = 1 - rho * r_max - 16 * eps;
    gap = isnan(gap) ? gap : (gap < 0 ? 0 : gap);
    const double chord = 1 / (gap * gap) - 1;
    const double bound = (n0 + under) * (1 + (r_max > 0 ? chord * rbar / r_max : INFINITY));
    const int zero = bound * (1 + 32 * eps) <= 1;
    double estimate = theta + one_sided / (4 * psi);
    estimate = isnan(estimate) ? 0 : (isinf(estimate) ? (estimate > 0 ? DBL_MAX : -DBL_MAX) : estimate);
    double start = (isnan(theta) || isinf(theta)) ? 0 : theta;
    *theta_out = (certified && !zero) ? estimate : 0;
    *start_out = start < 0 ? 0 : start;
    *settled_out = zero || certified;
}

/* The hot loops over one row segment of n elements, for T = float or double: plain loops over
 * contiguous memory, which the compiler vectorises (float terms widened to double for the
 * sums). dv is the metric d, or (sqrt_v) Adam's v with d = sqrt(v) + c. */
#define DEFINE_ROWS(T, SQRT)                                                                                  \
    static void sq_row_##T(const T *restrict x, double *restrict acc, int64_t n) {                             \
        for (int64_t i = 0; i < n; i++) acc[i] += (double)x[i] * (double)x[i];                                  \
    }                                                                                                          \
    static void adam_row_##T(T *restrict x, const T *restrict g, T *restrict m, T *restrict v, T c, T alpha,   \
                             T decay, T wd, T w1, T beta2, T w2, double *restrict acc, int64_t n) {               \
        for (int64_t i = 0; i < n; i++) {                                                                      \
            ADAM(T, SQRT, x, g, m, v, xi, d)                                                                   \
            acc[i] += (double)xi * (double)xi;                                                                 \
        }                                                                                                      \
    }                                                                                                          \
    /* Adam's update of one row and, in the same loop, the moments about the given expansion points. */       \
    static void adam_moments_row_##T(T *restrict x, const T *restrict g, T *restrict m, T *restrict v, T c,    \
                                     T alpha, T decay, T wd, T w1, T beta2, T w2, const T *restrict rho, T tau,\
                                     double *restrict acc, double *restrict n0, double *restrict n1,           \
                                     double *restrict n2, double *restrict n3, double *restrict n4,            \
                                     T *restrict mx, int64_t n) {                                              \
        for (int64_t i = 0; i < n; i++) {                                                                      \
            ADAM(T, SQRT, x, g, m, v, xi, d)                                                                   \
            acc[i] += (double)xi * (double)xi;                                                                 \
            MOMENTS_FAST(T, xi, d)                                                                             \
        }                                                                                                      \
    }                                                                                                          \
    /* The same for two rows (x, ...) and (y, ...), whose terms are added in T before the double sums   \
     * (one rounding of the dtype per pair, about what torch's own float summation costs): half the  \
     * double arithmetic, the bottleneck of this loop. */                                               \
    static void adam_moments_2row_##T(T *restrict x, const T *restrict g, T *restrict m, T *restrict v,        \
                                      T *restrict y, const T *restrict h, T *restrict l, T *restrict u, T c,   \
                                      T alpha, T decay, T wd, T w1, T beta2, T w2, const T *restrict rho,      \
                                      T tau,                                                                   \
                                      double *restrict acc, double *restrict n0, double *restrict n1,          \
                                      double *restrict n2, double *restrict n3, double *restrict n4,           \
                                      T *restrict mx, int64_t n) {                                             \
        for (int64_t i = 0; i < n; i++) {                                                                      \
            ADAM(T, SQRT, x, g, m, v, xi, d)                                                                   \
            ADAM(T, SQRT, y, h, l, u, yi, e)                                                                   \
            acc[i] += (double)xi * (double)xi + (double)yi * (double)yi;                                       \
            MOMENTS2(T, xi, d, yi, e)                                                                          \
        }                                                                                                      \
    }                                                                                                          \
    static void moments_row_##T(const T *restrict x, const T *restrict dv, T c, int sqrt_v,                    \
                                const T *restrict rho, T tau, double *restrict n0, double *restrict n1,        \
                                double *restrict n2, double *restrict n3, double *restrict n4,                 \
                                T *restrict mx, int64_t n) {                                                   \
        if (sqrt_v) {                                                                                          \
            for (int64_t i = 0; i < n; i++) {                                                                  \
                const T d = SQRT(dv[i]) + c;                                                                   \
                MOMENTS(T, x[i], d)                                                                            \
            }                                                                                                  \
        } else {                                                                                               \
            for (int64_t i = 0; i < n; i++) {                                                                  \
                const T d = dv[i];                                                                             \
                MOMENTS(T, x[i], d)                                                                            \
            }                                                                                                  \
        }                                                                                                      \
    }                                                                                                          \
    /* z = x * d/(d + s): s > 0 for settled groups (infinite for zeros), 0 for open ones (left as they are). */ \
    static void write_row_##T(T *restrict x, const T *restrict dv, T c, int sqrt_v, const T *restrict s,       \
                              int64_t n) {                                                                     \
        if (sqrt_v) {                                                                                          \
            for (int64_t i = 0; i < n; i++) {                                                                  \
                const T d = SQRT(dv[i]) + c;                                                                   \
                x[i] = s[i] > 0 ? x[i] * (d / (d + s[i])) : x[i];                                              \
            }                                                                                                  \
        } else {                                                                                               \
            for (int64_t i = 0; i < n; i++) x[i] = s[i] > 0 ? x[i] * (dv[i] / (dv[i] + s[i])) : x[i];          \
        }                                                                                                      \
    }

/* Element i of torch.optim.Adam's update (lerp, addcmul, addcdiv) of row X (gradient G, moments
 * M, V): defines XI, the new x, and D = sqrt(v) + c, the prox's metric. */
#define ADAM(T, SQRT, X, G, M, V, XI, D)                                                                      \
    const T G##i_ = wd != 0 ? G[i] + wd * X[i] : G[i];                                                         \
    const T M##i_ = M[i] + w1 * (G##i_ - M[i]);                                                                \
    const T V##i_ = V[i] * beta2 + w2 * G##i_ * G##i_; /* as addcmul: (w2 g) g, finite up to g ~ 1e20 */    \
    const T D = SQRT(V##i_) + c;                                                                               \
    const T XI = X[i] * decay - alpha * (M##i_ / D);                                                           \
    M[i] = M##i_, V[i] = V##i_, X[i] = XI;

/* r = 1/(rho + tau/d), as torch forms it (finite for d = inf), and the terms X^2 r^(2+k), formed
 * in T, summed in double. */
#define MOMENTS(T, X, D) MOMENTS_R(T, X, (T)1 / (rho[i] + tau / D))

/* The same with r = d/(rho d + tau), one division less, for the fused pass: an infinite d makes it
 * NaN, and such a group gets its second round with MOMENTS. */
#define MOMENTS_FAST(T, X, D) MOMENTS_R(T, X, D / (rho[i] * D + tau))

#define MOMENTS_R(T, X, R)                                                                                    \
    const T r = R;                                                                                             \
    T s = (X) * (X);                                                                                           \
    s = s * r;                                                                                                 \
    s = s * r;                                                                                                 \
    mx[i] = r > mx[i] ? r : mx[i];                                                                             \
    n0[i] += s;                                                                                                \
    s = s * r;                                                                                                 \
    n1[i] += s;                                                                                                \
    s = s * r;                                                                                                 \
    n2[i] += s;                                                                                                \
    s = s * r;                                                                                                 \
    n3[i] += s;                                                                                                \
    s = s * r;                                                                                                 \
    n4[i] += s;

/* MOMENTS_FAST for two elements X (metric D) and Y (metric E) of one position, their terms added in T. */
#define MOMENTS2(T, X, D, Y, E)                                                                               \
    const T r = D / (rho[i] * D + tau), q = E / (rho[i] * E + tau);                                            \
    T s = (X) * (X), t = (Y) * (Y);                                                                            \
    s = s * r, t = t * q;                                                                                      \
    s = s * r, t = t * q;                                                                                      \
    mx[i] = (r > q ? r : q) > mx[i] ? (r > q ? r : q) : mx[i];                                                 \
    n0[i] += s + t;                                                                                            \
    s = s * r, t = t * q;                                                                                      \
    n1[i] += s + t;                                                                                            \
    s = s * r, t = t * q;                                                                                      \
    n2[i] += s + t;                                                                                            \
    s = s * r, t = t * q;                                                                                      \
    n3[i] += s + t;                                                                                            \
    s = s * r, t = t * q;                                                                                      \
    n4[i] += s + t;

DEFINE_ROWS(float, sqrtf)
DEFINE_ROWS(double, sqrt)

/* One tile, for T = float or double. Sums are per position p = a*run + r (run = k*B elements
 * in each (o, a) row), over the rows o, in the SCRATCH arrays of max_positions doubles. With
 * expansion points (fused) Adam's update and the moments share one pass over the rows; without,
 * the moments are taken about rho = ||x|| in a second pass. */
#define DEFINE_TILE(T, EPS, TINY)                                                                             \
    static void tile_##T(const pk_job *job, const pk_tensor *tt, int64_t j0, int64_t j1) {                     \
        const int64_t mp = job->max_positions;                                                                   \
        T *x = (T *)tt->x, *m = (T *)tt->m, *v = (T *)tt->v;                                                     \
        const T *g = (const T *)tt->g, *dv = tt->g ? v : (const T *)tt->d;                                       \
        const T tau = (T)tt->tau, c = (T)tt->c, alpha = (T)tt->alpha, decay = (T)tt->decay, wd = (T)tt->wd;      \
        /* 1 - beta formed in double, as torch forms it (in the dtype it would cancel: 1 - 0.999f). */    \
        const T w1 = (T)(1 - job->beta1), beta2 = (T)job->beta2, w2 = (T)(1 - job->beta2);                      \
        const int sqrt_v = g != NULL;                                                                            \
        const int64_t O = tt->O, A = tt->A, C = tt->C, B = tt->B, k = j1 - j0, run = k * B, P = A * run;        \
        double *acc = job->scratch, *n0 = acc + mp, *n1 = n0 + mp, *n2 = n1 + mp, *n3 = n2 + mp;                \
        double *n4 = n3 + mp, *Ag = n4 + mp;                                                                     \
        T *rho_p = (T *)(Ag + mp), *rmax_p = (T *)(Ag + 2 * mp), *s_p = (T *)(Ag + 3 * mp);                     \
        const T *rho_in = (const T *)tt->rho;                                                                    \
        int fused = g && rho_in;                                                                                 \
        for (int64_t j = j0; fused && j < j1; j++) fused = rho_in[j] >= 0 && rho_in[j] < INFINITY;              \
        for (double *sum = acc; sum <= n4; sum += mp) memset(sum, 0, sizeof(double) * P);                        \
        memset(rmax_p, 0, sizeof(T) * P);                                                                        \
        if (fused) {                                                                                             \
            for (int64_t gr = 0; gr < k; gr++)                                                                   \
                for (int64_t a = 0; a < A; a++)                                                                  \
                    for (int64_t b = 0; b < B; b++) rho_p[a * run + gr * B + b] = rho_in[j0 + gr];          \
            for (int64_t o = 0; o < O; o += 2)                                                                   \
                for (int64_t a = 0; a < A; a++) {                                                                \
                    const int64_t off = ((o * A + a) * C + j0) * B, p = a * run, nx = off + A * C * B;           \
                    if (o + 1 < O)                                                                               \
                        adam_moments_2row_##T(x + off, g + off, m + off, v + off, x + nx, g + nx, m + nx, v + nx, \
                                              c, alpha, decay, wd, w1, beta2, w2, rho_p + p, tau, acc + p, n0 + p, \
                                              n1 + p, n2 + p, n3 + p, n4 + p, rmax_p + p, run);                  \
                    else                                                                                         \
                        adam_moments_row_##T(x + off, g + off, m + off, v + off, c, alpha, decay, wd, w1, beta2, \
                                             w2, rho_p + p, tau, acc + p, n0 + p, n1 + p, n2 + p, n3 + p,     \
                                             n4 + p, rmax_p + p, run);                                           \
                }                                                                                                \
        } else {                                                                                                 \
            for (int64_t o = 0; o < O; o++)                                                                      \
                for (int64_t a = 0; a < A; a++) {                                                                \
                    const int64_t off = ((o * A + a) * C + j0) * B;                                              \
                    if (g)                                                                                       \
                        adam_row_##T(x + off, g + off, m + off, v + off, c, alpha, decay, wd, w1, beta2, w2,     \
                                     acc + a * run, run);                                                        \
                    else                                                                                         \
                        sq_row_##T(x + off, acc + a * run, run);                                                 \
                }                                                                                                \
        }                                                                                                        \
        for (int64_t gr = 0; gr < k; gr++) {                                                                     \
            double s = 0;                                                                                        \
            for (int64_t a = 0; a < A; a++)                                                                      \
                for (int64_t b = 0; b < B; b++) s += acc[a * run + gr * B + b];                                  \
            Ag[gr] = s;                                                                                          \
            if (fused) continue;                                                                                 \
            const T rho = (T)sqrt(s);                                                                            \
            for (int64_t a = 0; a < A; a++)                                                                      \
                for (int64_t b = 0; b < B; b++) rho_p[a * run + gr * B + b] = rho;                               \
        }                                                                                                        \
        for (int64_t o = 0; o < O && !fused; o++)                                                                \
            for (int64_t a = 0; a < A; a++) {                                                                    \
                const int64_t off = ((o * A + a) * C + j0) * B, p = a * run;                                     \
                moments_row_##T(x + off, dv + off, c, sqrt_v, rho_p + p, tau, n0 + p, n1 + p, n2 + p, n3 + p,    \
                                n4 + p, rmax_p + p, run);                                                        \
            }                                                                                                    \
        int any = 0;                                                                                             \
        const double size = (double)(O * A * B);                                                                 \
        for (int64_t gr = 0; gr < k; gr++) {                                                                     \
            const int64_t gi = tt->g0 + j0 + gr;                                                                 \
            /* Round 0 from the tile's sums; a group left open gets round 1: its moments again, about    \
             * the model's root (which it was not certified at, but is close to), or ||x|| if none. */    \
            for (int round = 0; round < 2; round++) {                                                            \
                if (round == 1) {                                                                                \
                    const double root = job->start[gi];                                                          \
                    const double st = root > 0 && root < INFINITY ? root : sqrt(Ag[gr]);                         \
                    if (job->settled[gi] || !(st < INFINITY)) break;                                             \
                    for (int64_t a = 0; a < A; a++)                                                              \
                        for (int64_t b = 0; b < B; b++) {                                                        \
                            const int64_t p = a * run + gr * B + b;                                              \
                            rho_p[p] = (T)st, rmax_p[p] = 0, n0[p] = n1[p] = n2[p] = n3[p] = n4[p] = 0;          \
                        }                                                                                        \
                    for (int64_t o = 0; o < O; o++)                                                              \
                        for (int64_t a = 0; a < A; a++) {                                                        \
                            const int64_t off = ((o * A + a) * C + j0 + gr) * B, p = a * run + gr * B;           \
                            moments_row_##T(x + off, dv + off, c, sqrt_v, rho_p + p, tau, n0 + p, n1 + p,        \
                                            n2 + p, n3 + p, n4 + p, rmax_p + p, B);                              \
                        }                                                                                        \
                }                                                                                                \
                double n[5] = {0, 0, 0, 0, 0}, rmax = 0;                                                         \
                for (int64_t a = 0; a < A; a++)                                                                  \
                    for (int64_t b = 0; b < B; b++) {                                                            \
                        const int64_t p = a * run + gr * B + b;                                                  \
                        n[0] += n0[p], n[1] += n1[p], n[2] += n2[p], n[3] += n3[p], n[4] += n4[p];               \
                        rmax = rmax_p[p] > rmax ? rmax_p[p] : rmax;                                              \
                    }                                                                                            \
                moment_root(Ag[gr], (double)rho_p[gr * B], rmax, n, size, EPS, TINY, job->tol, job->theta + gi,   \
                            job->start + gi, job->settled + gi);                                                 \
            }                                                                                                    \
            const double th = job->theta[gi];                                                                    \
            const T s = job->settled[gi] ? (th > 0 ? (T)((double)tau / th) : (T)INFINITY) : (T)0;               \
            any |= job->settled[gi];                                                                             \
            for (int64_t a = 0; a < A; a++)                                                                      \
                for (int64_t b = 0; b < B; b++) s_p[a * run + gr * B + b] = s;                                   \
        }                                                                                                        \
        if (!any) return;                                                                                        \
        for (int64_t o = 0; o < O; o++)                                                                          \
            for (int64_t a = 0; a < A; a++) {                                                                    \
                const int64_t off = ((o * A + a) * C + j0) * B;                                                  \
                write_row_##T(x + off, dv + off, c, sqrt_v, s_p + a * run, run);                                 \
            }                                                                                                    \
    }

DEFINE_TILE(float, (double)FLT_EPSILON, (double)FLT_MIN)
DEFINE_TILE(double, DBL_EPSILON, DBL_MIN)

static void *run_job(void *arg) {
    const pk_job *job = (const pk_job *)arg;
    for (int64_t i; (i = __atomic_fetch_add(job->next, 1, __ATOMIC_RELAXED)) < job->count;) {
        const pk_tile *tl = job->tiles + i;
        if (job->is_double)
            tile_double(job, job->tensors + tl->t, tl->j0, tl->j1);
        else
            tile_float(job, job->tensors + tl->t, tl->j0, tl->j1);
    }
    return NULL;
}

/* Groups per tile: at most MAX_POSITIONS positions (long rows stream fastest), and a tensor larger
 * than one worker's share of the call in two tiles per worker (tiles do not change any group's
 * result: each is computed from its own rows). */
static int64_t groups_per_tile(const pk_tensor *tt, int nthreads, int64_t total) {
    const int64_t ab = tt->A * tt->B;
    int64_t k = MAX_POSITIONS / ab < tt->C ? MAX_POSITIONS / ab : tt->C;
    if (nthreads > 1 && tt->O * ab * tt->C > total / nthreads) {
        const int64_t share = (tt->C + 2 * nthreads - 1) / (2 * nthreads);
        if (share < k) k = share;
    }
    return k < 1 ? 1 : k;
}

static int by_cost(const void *a, const void *b) {
    const pk_tile *p = (const pk_tile *)a, *q = (const pk_tile *)b;
    if (p->cost != q->cost) return p->cost < q->cost ? 1 : -1;
    if (p->t != q->t) return p->t < q->t ? -1 : 1;
    return (p->j0 > q->j0) - (p->j0 < q->j0);
}

/* The weighted lasso prox of n tensors of one dtype, each first updated by Adam when its g is
 * set; per-group outputs theta (0 for zero groups), start (a Newton start for open groups)
 * and settled. Returns 0, or before anything is written -1 when memory ran out and TOO_LARGE
 * for a group too large for the scratch. nthreads
 * workers take the tiles, largest first, as they become free: a tile's results do not
 * depend on which worker computes it. */
int pk_lasso(const pk_tensor *tensors, int64_t n, int is_double, double beta1, double beta2, double tol,
             double *theta, double *start, uint8_t *settled, int nthreads) {
    int64_t count = 0, max_positions = 1, next = 0;
    if (nthreads < 1) nthreads = 1;
    const int split = nthreads; /* the tiling's worker count, before it is capped by the tiles */
    int64_t total = 0;
    for (int64_t t = 0; t < n; t++) {
        if (tensors[t].A * tensors[t].B > MAX_POSITIONS) return TOO_LARGE;
        total += tensors[t].O * tensors[t].A * tensors[t].B * tensors[t].C;
    }
    for (int64_t t = 0; t < n; t++) {
        const pk_tensor *tt = tensors + t;
        const int64_t k = groups_per_tile(tt, split, total);
        count += (tt->C + k - 1) / k;
        if (k * tt->A * tt->B > max_positions) max_positions = k * tt->A * tt->B;
    }
    if (count == 0) return 0;
    if (nthreads > count) nthreads = (int)count;
    pk_tile *tiles = malloc(sizeof(pk_tile) * count);
    pk_job *jobs = calloc(nthreads, sizeof(pk_job));
    pthread_t *threads = calloc(nthreads, sizeof(pthread_t));
    int *started = calloc(nthreads, sizeof(int));
    double *scratch = malloc(sizeof(double) * SCRATCH * max_positions * nthreads);
    if (!tiles || !jobs || !threads || !started || !scratch) {
        free(tiles), free(jobs), free(threads), free(started), free(scratch);
        return -1;
    }
    int64_t i = 0;
    for (int64_t t = 0; t < n; t++) {
        const int64_t k = groups_per_tile(tensors + t, split, total);
        for (int64_t j = 0; j < tensors[t].C; j += k, i++) {
            const pk_tensor *tt = tensors + t;
            tiles[i].t = t, tiles[i].j0 = j, tiles[i].j1 = j + k < tt->C ? j + k : tt->C;
            tiles[i].cost = (tiles[i].j1 - j) * (tt->O * tt->A * tt->B + 128); /* a group's root: ~128 elements */
        }
    }
    qsort(tiles, count, sizeof(pk_tile), by_cost);
    for (int w = 0; w < nthreads; w++)
        jobs[w] = (pk_job){tensors, tiles, count, &next, max_positions, is_double, beta1, beta2, tol,
                           theta, start, settled, scratch + (int64_t)w * SCRATCH * max_positions};
    for (int w = 1; w < nthreads; w++) started[w] = pthread_create(threads + w, NULL, run_job, jobs + w) == 0;
    run_job(jobs); /* with the workers that started; should none start, this does every tile */
    for (int w = 1; w < nthreads; w++)
        if (started[w]) pthread_join(threads[w], NULL);
    free(tiles), free(jobs), free(threads), free(started), free(scratch);
    return 0;
}
