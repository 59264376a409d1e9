/* Calls the exported model: fill the inputs, run, print the outputs. */
#include <stdio.h>

#include "model.h"

int main(void)
{
    float features[MODEL_FEATURES_COUNT];
    for (int i = 0; i < MODEL_FEATURES_COUNT; i++)
        features[i] = 0.25f * (float)i - 1.0f;

    float scores[MODEL_SCORES_COUNT];
    int status = model_run(features, MODEL_FEATURES_COUNT, scores, MODEL_SCORES_COUNT);
    if (status != MODEL_OK) {
        fprintf(stderr, "model_run failed: %s\n", model_strerror(status));
        return 1;
    }
    int64_t shape[1];
    model_output_shape(0, shape);
    for (int64_t i = 0; i < shape[0]; i++)
        printf("scores[%lld] = %.6f\n", (long long)i, scores[i]);

    /* Wrong sizes are reported, not crashed on. */
    status = model_run(features, 3, scores, MODEL_SCORES_COUNT);
    printf("with a wrong count: %s\n", model_strerror(status));
    return 0;
}
