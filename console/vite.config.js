// Vite build of the console: served by Keel under /console/ (src/http/console.rs embeds
// dist/ with rust-embed), hashed files under assets/, JSX compiled for Preact by Vite's own
// transformer (no Babel). `npm run dev` proxies the API to a Keel on 127.0.0.1:8080.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/console/',
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: { outDir: 'dist', assetsDir: 'assets', emptyOutDir: true, target: 'es2022' },
  server: { proxy: { '/admin': 'http://127.0.0.1:8080', '/v1': 'http://127.0.0.1:8080' } },
});
