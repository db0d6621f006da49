// oneDNN's C API (Debian libdnnl-dev 2.6.x) plus the two OpenMP calls WanKit needs
// to keep oneDNN single-threaded inside its own worker threads.
#include <oneapi/dnnl/dnnl.h>
int omp_get_max_threads(void);
void omp_set_num_threads(int num_threads);
