import { defineConfig } from "vitest/config";
import { playwright } from "@vitest/browser-playwright";
import chromiumArgs from "./tests/chromium-args.json";

// Unit tests run in Debian's Chromium (browser downloads are impossible here), so WebGL2 is real.
const chromium = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

export default defineConfig({
  test: {
    include: ["js/**/*.test.ts"],
    browser: {
      enabled: true,
      headless: true,
      provider: playwright({
        launchOptions: {
          executablePath: chromium,
          args: chromiumArgs,
        },
      }),
      instances: [{ browser: "chromium" }],
    },
  },
});
