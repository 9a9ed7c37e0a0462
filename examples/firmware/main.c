/* Bare-metal Cortex-M4 firmware for the bundled vibration model: classify one window and print the
 * result over semihosting (QEMU's console). The model comes from
 *     onnx2cmsis convert examples/vibration_keras/vibration_cnn.h5 --calibration ... --out out
 * and is built from out/vibration_cnn.mk (Makefile) or out/vibration_cnn.cmake (CMakeLists.txt). */
#include <stdint.h>

#include "sample.h"
#include "semihost.h"
#include "vibration_cnn.h"

#if !defined(VIBRATION_CNN_INPUT_TIME_MAJOR) || !VIBRATION_CNN_INPUT_TIME_MAJOR
#error "out/vibration_cnn.h is not the Keras example's (time-major) model: run onnx2cmsis convert examples/vibration_keras/vibration_cnn.h5 --calibration examples/vibration_keras/calibration.npy --out out"
#endif
#if VIBRATION_CNN_INPUT_STEPS != SAMPLE_STEPS || VIBRATION_CNN_INPUT_CHANNELS != SAMPLE_CHANNELS
#error "sample.h does not match the model's input window: convert the Keras example into out/ (onnx2cmsis convert examples/vibration_keras/vibration_cnn.h5 --calibration examples/vibration_keras/calibration.npy --out out) or remake sample.h with make_sample.py"
#endif

static const char *const class_names[] = {"normal", "imbalance", "misalignment", "bearing"};

/* Markers around the inference: `make count` has QEMU count the instructions between them. */
__attribute__((noinline)) void region_start(void)
{
    __asm volatile("" ::: "memory");
}

__attribute__((noinline)) void region_stop(void)
{
    __asm volatile("" ::: "memory");
}

static void put_uint(uint32_t v)
{
    char text[11];
    int i = 10;
    text[i] = '\0';
    do {
        text[--i] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v != 0u);
    sh_puts(&text[i]);
}

int main(void)
{
    static vibration_cnn_input_t input[VIBRATION_CNN_INPUT_SIZE];
    static vibration_cnn_output_t output[VIBRATION_CNN_OUTPUT_SIZE];
    float probability[VIBRATION_CNN_OUTPUT_SIZE];
    int status;
    uint32_t best = 0, i;

    vibration_cnn_quantize_input(sample_window, input);
    region_start();
    status = vibration_cnn_invoke(input, output);
    region_stop();
    if (status != 0) {
        sh_puts("vibration_cnn_invoke failed\n");
        return 1;
    }
    vibration_cnn_dequantize_output(output, probability);
    for (i = 1; i < VIBRATION_CNN_OUTPUT_SIZE; i++) {
        if (probability[i] > probability[best]) {
            best = i;
        }
    }
    sh_puts("class ");
    put_uint(best);
    sh_puts(" (");
    sh_puts(class_names[best]);
    sh_puts("), expected ");
    put_uint(SAMPLE_CLASS);
    sh_puts(", probability ");
    put_uint((uint32_t)(probability[best] * 100.0f + 0.5f));
    sh_puts("%\n");
    return best == SAMPLE_CLASS ? 0 : 2;
}
